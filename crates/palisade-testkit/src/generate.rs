//! Seeded cluster generators. The same seed always gives the same objects.
//!
//! - [`generate_cluster`]: a realistic cluster for benchmarks: teams and environments,
//!   applications with replicas, named container ports, per-node address ranges, and the
//!   policies people actually write (default-deny, allow-from-app, allow-from-namespace,
//!   ipBlock egress with except, DNS egress, named ports, port ranges, matchExpressions,
//!   `ingress: [{}]`).
//! - [`small_cluster`] and the [`small`] building blocks: tiny clusters for property tests,
//!   with few labels and values so selectors collide often, ipBlocks around the pod
//!   addresses, pods without addresses, hostNetwork pods and terminal pods.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use palisade_model::{
    ContainerPort, Direction, IpBlock, Key, LabelSelector, Labels, Namespace, NetworkPolicy,
    Object, Operator, Peer, Pod, PodPhase, PodSource, PortMatch, PortSpec, Protocol, Requirement,
};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::build::{
    SelectorExt, all, ip_block, namespaces, pods, pods_in, policy, rule, sel, tcp, tcp_named,
    tcp_range, udp,
};

/// The shape of a generated cluster.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub namespaces: usize,
    /// Pods (or workloads, when `addresses` is false), including system pods.
    pub pods: usize,
    pub policies: usize,
    /// Nodes pods are spread over (0: no node assignment).
    pub nodes: usize,
    /// Every pod gets an IPv6 address besides its IPv4 one.
    pub dual_stack: bool,
    /// true: a live cluster (addresses, nodes, phases, hostNetwork node agents). false:
    /// workloads as read from manifests: one representative pod per workload, no address.
    pub addresses: bool,
    /// Share of pods that are Succeeded/Failed (finished jobs); live clusters only.
    pub terminal_ratio: f64,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            namespaces: 20,
            pods: 400,
            policies: 200,
            nodes: 4,
            dual_stack: false,
            addresses: true,
            terminal_ratio: 0.01,
        }
    }
}

impl GenParams {
    /// The benchmark cluster: 10,000 pods in 500 namespaces, 5,000 policies, 50 nodes.
    pub fn large() -> Self {
        Self {
            namespaces: 500,
            pods: 10_000,
            policies: 5_000,
            nodes: 50,
            ..Self::default()
        }
    }

    /// Workloads as read from manifests (no addresses, no nodes): `workloads` of them in
    /// 100 namespaces with half as many policies.
    pub fn workloads(workloads: usize) -> Self {
        Self {
            namespaces: 100,
            pods: workloads,
            policies: workloads / 2,
            nodes: 0,
            dual_stack: false,
            addresses: false,
            terminal_ratio: 0.0,
        }
    }
}

const TEAMS: [&str; 10] = [
    "payments", "search", "identity", "platform", "data", "web", "mobile", "ml", "ads", "billing",
];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const SCTP: Protocol = Protocol::Sctp;

/// An application kind: name, tier, container ports.
type Kind = (
    &'static str,
    &'static str,
    &'static [(&'static str, u16, Protocol)],
);

const KINDS: [Kind; 15] = [
    (
        "frontend",
        "frontend",
        &[("http", 8080, TCP), ("metrics", 9090, TCP)],
    ),
    ("web", "frontend", &[("http", 80, TCP), ("https", 443, TCP)]),
    (
        "api",
        "backend",
        &[
            ("http", 8080, TCP),
            ("grpc", 50051, TCP),
            ("metrics", 9090, TCP),
        ],
    ),
    (
        "checkout",
        "backend",
        &[("grpc", 50051, TCP), ("metrics", 9090, TCP)],
    ),
    (
        "catalog",
        "backend",
        &[("http", 8080, TCP), ("metrics", 9090, TCP)],
    ),
    ("auth", "backend", &[("grpc", 50051, TCP)]),
    (
        "search",
        "backend",
        &[("http", 9200, TCP), ("transport", 9300, TCP)],
    ),
    ("worker", "worker", &[("metrics", 9090, TCP)]),
    (
        "postgres",
        "db",
        &[("postgres", 5432, TCP), ("metrics", 9187, TCP)],
    ),
    ("redis", "cache", &[("redis", 6379, TCP)]),
    (
        "kafka",
        "queue",
        &[("kafka", 9092, TCP), ("kafka-ctrl", 9093, TCP)],
    ),
    (
        "memcached",
        "cache",
        &[("memcache", 11211, TCP), ("memcache-udp", 11211, UDP)],
    ),
    (
        "gateway",
        "edge",
        &[
            ("http", 8080, TCP),
            ("https", 8443, TCP),
            ("quic", 8443, UDP),
        ],
    ),
    ("statsd", "monitoring", &[("statsd", 8125, UDP)]),
    ("signal", "backend", &[("sigtran", 2905, SCTP)]),
];

const DNS: Kind = (
    "kube-dns",
    "system",
    &[
        ("dns", 53, UDP),
        ("dns-tcp", 53, TCP),
        ("metrics", 9153, TCP),
    ],
);
const PROMETHEUS: Kind = ("prometheus", "monitoring", &[("web", 9090, TCP)]);

/// One application of a namespace, as the policy generator sees it.
#[derive(Debug, Clone)]
struct App {
    name: String,
    tier: &'static str,
    ports: &'static [(&'static str, u16, Protocol)],
}

fn hex(rng: &mut impl Rng, n: usize) -> String {
    const DIGITS: &[u8] = b"0123456789bcdfghjklmnpqrstvwxz";
    (0..n)
        .map(|_| DIGITS[rng.random_range(0..DIGITS.len())] as char)
        .collect()
}

fn to_labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Addresses handed out per node: 10.(node+1).0.0/16 and fd00:0:0:(node+1)::/64.
#[derive(Debug)]
struct Addresses {
    next: Vec<u32>,
    dual_stack: bool,
}

impl Addresses {
    fn pod(&mut self, node: usize) -> Vec<IpAddr> {
        let j = self.next[node];
        self.next[node] += 1;
        let k = node as u32 + 1;
        let v4 = Ipv4Addr::from((10 << 24) | ((k & 0xff) << 16) | (j & 0xffff));
        let mut ips = vec![IpAddr::V4(v4)];
        if self.dual_stack {
            let v6 = Ipv6Addr::from((0xfd00u128 << 112) | (u128::from(k) << 64) | u128::from(j));
            ips.push(IpAddr::V6(v6));
        }
        ips
    }

    fn node(&self, node: usize) -> Vec<IpAddr> {
        let k = node as u32 + 1;
        let mut ips = vec![IpAddr::V4(Ipv4Addr::from((192 << 24) | (168 << 16) | k))];
        if self.dual_stack {
            ips.push(IpAddr::V6(Ipv6Addr::from(
                (0xfd01u128 << 112) | u128::from(k),
            )));
        }
        ips
    }
}

/// A realistic cluster, deterministic for a seed: namespaces first, then pods, then
/// policies. Namespace 0 is `kube-system` (DNS, hostNetwork node agents), namespace 1
/// `monitoring` (Prometheus), the rest `<team>-<env>-<i>`.
pub fn generate_cluster(seed: u64, params: GenParams) -> Vec<Object> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n_ns = params.namespaces.max(1);
    let mut out = Vec::with_capacity(n_ns + params.pods + params.policies);

    // ---- namespaces ----
    let mut ns_names = Vec::with_capacity(n_ns);
    for i in 0..n_ns {
        let (name, labels) = match i {
            0 => ("kube-system".to_string(), to_labels(&[("tier", "system")])),
            1 => (
                "monitoring".to_string(),
                to_labels(&[("team", "platform"), ("purpose", "monitoring")]),
            ),
            _ => {
                let team = *TEAMS.choose(&mut rng).expect("non-empty");
                let env = *ENVS.choose(&mut rng).expect("non-empty");
                let mut labels = to_labels(&[("team", team), ("env", env)]);
                if rng.random_bool(0.3) {
                    labels.insert("istio-injection".into(), "enabled".into());
                }
                (format!("{team}-{env}-{i}"), labels)
            }
        };
        ns_names.push(name.clone());
        out.push(Object::Namespace(Namespace::new(name, labels)));
    }

    // ---- pods ----
    let nodes = params.nodes;
    let mut addresses = Addresses {
        next: vec![2; nodes.max(1)],
        dual_stack: params.dual_stack,
    };
    let mut apps_by_ns: Vec<Vec<App>> = vec![Vec::new(); n_ns];
    let mut global = 0usize;
    for (i, ns) in ns_names.iter().enumerate() {
        let quota = params.pods / n_ns + usize::from(i < params.pods % n_ns);
        let mut made = 0;
        let mut host_agents = 0;
        while made < quota {
            // Node agents (one hostNetwork pod per node) in kube-system of a live cluster.
            if i == 0 && params.addresses && host_agents < nodes {
                let node = host_agents;
                host_agents += 1;
                let mut p = Pod::new(
                    ns,
                    &format!("node-exporter-{}", hex(&mut rng, 5)),
                    to_labels(&[("app", "node-exporter")]),
                );
                p.host_network = true;
                p.node = Some(format!("node-{node}"));
                p.ips = addresses.node(node);
                p.ports.push(ContainerPort {
                    name: Some("metrics".into()),
                    port: 9100,
                    protocol: TCP,
                });
                out.push(Object::Pod(p));
                made += 1;
                global += 1;
                continue;
            }
            let kind = match (i, apps_by_ns[i].len()) {
                (0, 0) => DNS,
                (1, 0) => PROMETHEUS,
                _ => *KINDS.choose(&mut rng).expect("non-empty"),
            };
            let (kind_name, tier, ports) = kind;
            let same = apps_by_ns[i]
                .iter()
                .filter(|a| a.name.starts_with(kind_name))
                .count();
            let name = if same == 0 {
                kind_name.to_string()
            } else {
                format!("{kind_name}-{}", same + 1)
            };
            let replicas = if params.addresses {
                rng.random_range(1..=4usize)
            } else {
                1
            };
            let version = ["v1", "v1", "v2", "v3"]
                .choose(&mut rng)
                .copied()
                .expect("non-empty");
            let hash = hex(&mut rng, 10);
            for _ in 0..replicas.min(quota - made) {
                let mut labels = if kind_name == "kube-dns" {
                    to_labels(&[("k8s-app", "kube-dns")])
                } else {
                    to_labels(&[("app", &name), ("tier", tier), ("version", version)])
                };
                if rng.random_bool(0.05) {
                    labels.insert("canary".into(), "true".into());
                }
                let pod_name = if params.addresses {
                    labels.insert("pod-template-hash".into(), hash.clone());
                    format!("{name}-{hash}-{}", hex(&mut rng, 5))
                } else {
                    name.clone()
                };
                let mut p = Pod::new(ns, &pod_name, labels);
                p.ports = ports
                    .iter()
                    .map(|(n, port, protocol)| ContainerPort {
                        name: Some((*n).to_string()),
                        port: *port,
                        protocol: *protocol,
                    })
                    .collect();
                if params.addresses {
                    let node = if nodes == 0 { 0 } else { global % nodes };
                    p.ips = addresses.pod(node);
                    p.node = (nodes > 0).then(|| format!("node-{node}"));
                    if rng.random_bool(params.terminal_ratio.clamp(0.0, 1.0)) {
                        p.phase = if rng.random_bool(0.7) {
                            PodPhase::Succeeded
                        } else {
                            PodPhase::Failed
                        };
                    }
                } else {
                    p.source = if tier == "db" {
                        PodSource::StatefulSet
                    } else {
                        PodSource::Deployment
                    };
                }
                out.push(Object::Pod(p));
                made += 1;
                global += 1;
            }
            apps_by_ns[i].push(App { name, tier, ports });
        }
    }

    // ---- policies ----
    for (i, ns) in ns_names.iter().enumerate() {
        let quota = params.policies / n_ns + usize::from(i < params.policies % n_ns);
        let apps = &apps_by_ns[i];
        for j in 0..quota {
            out.push(Object::NetworkPolicy(realistic_policy(
                &mut rng, ns, j, apps, &params,
            )));
        }
    }
    out
}

fn app_sel(app: &App) -> LabelSelector {
    sel(&[("app", &app.name)])
}

/// A named port of the app if it has one, else a numeric one.
fn app_port(rng: &mut impl Rng, app: &App) -> PortMatch {
    match app.ports.choose(rng) {
        Some((name, port, protocol)) => {
            if rng.random_bool(0.5) {
                PortMatch {
                    protocol: *protocol,
                    port: PortSpec::Named((*name).to_string()),
                }
            } else {
                PortMatch {
                    protocol: *protocol,
                    port: PortSpec::Range {
                        from: *port,
                        to: *port,
                    },
                }
            }
        }
        None => tcp(8080),
    }
}

fn realistic_policy(
    rng: &mut impl Rng,
    ns: &str,
    index: usize,
    apps: &[App],
    params: &GenParams,
) -> NetworkPolicy {
    use Direction::{Egress, Ingress};
    // The first policy of a namespace is usually its default-deny.
    let kind = if index == 0 {
        *[
            "deny-ingress",
            "deny-ingress",
            "deny-all",
            "deny-egress",
            "allow-same-namespace",
        ]
        .choose(rng)
        .expect("non-empty")
    } else {
        *[
            "allow-from-app",
            "allow-from-app",
            "allow-from-team",
            "allow-from-team-frontends",
            "allow-monitoring",
            "egress-internet",
            "egress-internal",
            "port-range",
            "match-expressions",
            "allow-all-ingress",
            "allow-dns",
            "egress-to-db",
            "allow-same-namespace",
        ]
        .choose(rng)
        .expect("non-empty")
    };
    let name = format!("{kind}-{index}");
    let app = apps.choose(rng).cloned().unwrap_or(App {
        name: "none".into(),
        tier: "backend",
        ports: &[],
    });
    let other = apps.choose(rng).cloned().unwrap_or_else(|| app.clone());
    let team = *TEAMS.choose(rng).expect("non-empty");
    let p = policy(ns, &name);
    let p = match kind {
        "deny-ingress" => p.types(&[Ingress]),
        "deny-all" => p.types(&[Ingress, Egress]),
        "deny-egress" => p.types(&[Egress]),
        "allow-same-namespace" => p.ingress(rule().from(pods(all()))),
        "allow-from-app" => {
            let mut r = rule().from(pods(app_sel(&other)));
            if rng.random_bool(0.3) {
                r = r.from(pods(sel(&[("tier", "frontend")])));
            }
            p.select(app_sel(&app)).ingress(r.port(app_port(rng, &app)))
        }
        "allow-from-team" => p
            .select(app_sel(&app))
            .ingress(rule().from(namespaces(sel(&[("team", team)])))),
        "allow-from-team-frontends" => p.select(app_sel(&app)).ingress(
            rule()
                .from(pods_in(
                    sel(&[("team", team)]).key_in("env", &["prod", "staging"]),
                    sel(&[("tier", "frontend")]),
                ))
                .port(app_port(rng, &app)),
        ),
        "allow-monitoring" => p.ingress(
            rule()
                .from(pods_in(
                    sel(&[("kubernetes.io/metadata.name", "monitoring")]),
                    sel(&[("app", "prometheus")]),
                ))
                .port(tcp_named("metrics")),
        ),
        "egress-internet" => {
            let mut r = rule().to(ip_block(
                "0.0.0.0/0",
                &["10.0.0.0/8", "169.254.169.254/32", "192.168.0.0/16"],
            ));
            if params.dual_stack {
                r = r.to(ip_block("::/0", &["fd00::/8"]));
            }
            p.select(sel(&[("tier", "frontend")]))
                .types(&[Egress])
                .egress(r.port(tcp(443)))
        }
        "egress-internal" => {
            let node = rng.random_range(1..=params.nodes.max(1));
            let except = format!("10.{}.0.0/16", node & 0xff);
            p.select(sel(&[("tier", app.tier)]))
                .types(&[Egress])
                .egress(
                    rule()
                        .to(ip_block("10.0.0.0/8", &[&except]))
                        .port(tcp_range(5432, 5440)),
                )
        }
        "port-range" => p.select(app_sel(&app)).ingress(
            rule()
                .from(pods(sel(&[("tier", "frontend")])))
                .port(tcp_range(8000, 8100))
                .port(PortMatch {
                    protocol: UDP,
                    port: PortSpec::Range {
                        from: 8125,
                        to: 8130,
                    },
                }),
        ),
        "match-expressions" => p
            .select(
                all()
                    .key_in("tier", &["backend", "db"])
                    .key_not_in("version", &["v1"]),
            )
            .ingress(rule().from(pods(all().key_exists("app").key_does_not_exist("canary"))))
            .ingress(
                rule()
                    .from(namespaces(all().key_not_in("env", &["dev"])))
                    .port(tcp(8080)),
            ),
        "allow-all-ingress" => p.select(app_sel(&app)).ingress(rule()),
        "allow-dns" => p.types(&[Egress]).egress(
            rule()
                .to(pods_in(
                    sel(&[("kubernetes.io/metadata.name", "kube-system")]),
                    sel(&[("k8s-app", "kube-dns")]),
                ))
                .port(udp(53))
                .port(tcp(53)),
        ),
        "egress-to-db" => p
            .select(sel(&[("tier", "backend")]))
            .types(&[Egress])
            .egress(
                rule()
                    .to(pods(all().key_in("tier", &["db", "cache"])))
                    .port(tcp_named("postgres"))
                    .port(tcp_named("redis")),
            ),
        other => unreachable!("unknown policy kind {other}"),
    };
    p.build()
}

/// Building blocks of [`small_cluster`], public so tests can generate changes to a cluster
/// (relabels, re-creations) from the same distributions.
///
/// Identities are fixed: pod `p<slot>` of namespace number `ns` always gets the addresses
/// 10.0.0.(4*slot+ns+1) and fd00::(4*slot+ns+1) when it has them, so live pods never
/// collide; hostNetwork pods carry their node's address 10.0.1.(n+1) / fd00::1:(n+1),
/// shared with the other hostNetwork pods of that node.
pub mod small {
    use super::*;

    /// The namespace universe.
    pub const NAMESPACES: [&str; 3] = ["a", "b", "c"];
    pub const NODES: [&str; 2] = ["n1", "n2"];
    /// Ports worth probing: every number the generator uses, and neighbours.
    pub const PORTS: [u16; 9] = [53, 79, 80, 81, 82, 83, 443, 8080, 9];

    pub fn pod_ips(slot: usize, ns: usize) -> [IpAddr; 2] {
        let n = (4 * slot + ns + 1) as u32;
        [
            IpAddr::V4(Ipv4Addr::from((10 << 24) | n)),
            IpAddr::V6(Ipv6Addr::from((0xfd00u128 << 112) | u128::from(n))),
        ]
    }

    pub fn node_ips(node: usize) -> [IpAddr; 2] {
        let n = node as u32 + 1;
        [
            IpAddr::V4(Ipv4Addr::from((10 << 24) | (1 << 8) | n)),
            IpAddr::V6(Ipv6Addr::from(
                (0xfd00u128 << 112) | (1 << 16) | u128::from(n),
            )),
        ]
    }

    /// Addresses for flows with IP endpoints: some pods', some nodes', some outside.
    pub fn probe_ips(rng: &mut impl Rng) -> IpAddr {
        match rng.random_range(0..5) {
            0 | 1 => {
                pod_ips(rng.random_range(0..9), rng.random_range(0..3))[rng.random_range(0..2)]
            }
            2 => node_ips(rng.random_range(0..2))[rng.random_range(0..2)],
            3 => IpAddr::V4(Ipv4Addr::from((10u32 << 24) | rng.random_range(0..64u32))),
            _ => *[
                "8.8.8.8".parse().expect("ip"),
                "2001:db8::1".parse().expect("ip"),
                "192.168.1.1".parse().expect("ip"),
                "fd00::ff".parse().expect("ip"),
            ]
            .choose(rng)
            .expect("non-empty"),
        }
    }

    pub fn namespace(rng: &mut impl Rng, name: &str) -> Namespace {
        let mut labels = Labels::new();
        if rng.random_bool(0.6) {
            labels.insert(
                "team".into(),
                ["x", "y"].choose(rng).expect("non-empty").to_string(),
            );
        }
        if rng.random_bool(0.5) {
            labels.insert(
                "env".into(),
                ["p", "q"].choose(rng).expect("non-empty").to_string(),
            );
        }
        Namespace::new(name, labels)
    }

    fn pod_labels(rng: &mut impl Rng) -> Labels {
        let mut labels = Labels::new();
        if rng.random_bool(0.6) {
            labels.insert(
                "app".into(),
                ["web", "db"].choose(rng).expect("non-empty").to_string(),
            );
        }
        if rng.random_bool(0.5) {
            labels.insert(
                "tier".into(),
                ["fe", "be"].choose(rng).expect("non-empty").to_string(),
            );
        }
        labels
    }

    const CONTAINER_PORTS: [(Option<&str>, u16, Protocol); 8] = [
        (Some("http"), 80, TCP),
        (Some("http"), 8080, TCP),
        (Some("dns"), 53, UDP),
        (Some("dns"), 53, TCP),
        (Some("metrics"), 81, TCP),
        (None, 82, TCP),
        (Some("http"), 80, SCTP),
        (Some("metrics"), 83, UDP),
    ];

    /// Pod `p<slot>` of namespace number `ns` (an index into [`NAMESPACES`]).
    pub fn pod(rng: &mut impl Rng, ns: usize, slot: usize) -> Pod {
        let mut p = Pod::new(NAMESPACES[ns], &format!("p{slot}"), pod_labels(rng));
        for _ in 0..rng.random_range(0..=3) {
            let (name, port, protocol) = *CONTAINER_PORTS.choose(rng).expect("non-empty");
            // A pod never declares one name twice for one protocol.
            let clash = p
                .ports
                .iter()
                .any(|cp| cp.name.as_deref() == name && cp.protocol == protocol);
            if !clash || name.is_none() {
                p.ports.push(ContainerPort {
                    name: name.map(Into::into),
                    port,
                    protocol,
                });
            }
        }
        let node = rng.random_range(0..NODES.len());
        p.node = rng.random_bool(0.9).then(|| NODES[node].to_string());
        p.host_network = p.node.is_some() && rng.random_bool(0.12);
        let ips = if p.host_network {
            node_ips(node)
        } else {
            pod_ips(slot, ns)
        };
        p.ips = match rng.random_range(0..20) {
            0..=2 => vec![],
            3..=9 => vec![ips[0]],
            10..=12 => vec![ips[1]],
            // status.podIPs lists either family first.
            13..=17 => vec![ips[0], ips[1]],
            _ => vec![ips[1], ips[0]],
        };
        p.phase = match rng.random_range(0..20) {
            0 => PodPhase::Pending,
            1 => PodPhase::Unknown,
            2 | 3 => PodPhase::Succeeded,
            4 => PodPhase::Failed,
            _ => PodPhase::Running,
        };
        // §10: a finished pod may still list an address that a live pod now holds.
        if p.phase.is_terminal() && !p.host_network && rng.random_bool(0.5) {
            let other = pod_ips(rng.random_range(0..9), rng.random_range(0..3));
            p.ips = vec![other[rng.random_range(0..2)]];
        }
        p
    }

    fn selector(rng: &mut impl Rng, for_namespaces: bool) -> LabelSelector {
        if rng.random_bool(0.25) {
            return LabelSelector::everything();
        }
        let keys: &[(&str, &[&str])] = if for_namespaces {
            &[
                ("team", &["x", "y"]),
                ("env", &["p", "q"]),
                ("kubernetes.io/metadata.name", &["a", "b", "c"]),
            ]
        } else {
            &[("app", &["web", "db"]), ("tier", &["fe", "be"])]
        };
        let mut s = LabelSelector::default();
        for _ in 0..rng.random_range(0..=2) {
            let (k, values) = *keys.choose(rng).expect("non-empty");
            s.match_labels
                .insert(k.into(), values.choose(rng).expect("non-empty").to_string());
        }
        for _ in 0..rng.random_range(0..=2) {
            let (k, values) = *keys.choose(rng).expect("non-empty");
            let operator = *[
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
            ]
            .choose(rng)
            .expect("non-empty");
            let values = match operator {
                Operator::In | Operator::NotIn => {
                    let n = rng.random_range(1..=2);
                    let mut v: std::collections::BTreeSet<String> = values
                        .choose_multiple(rng, n)
                        .map(|v| v.to_string())
                        .collect();
                    if rng.random_bool(0.2) {
                        v.insert("zz".into());
                    }
                    v
                }
                _ => Default::default(),
            };
            s.match_expressions.push(Requirement {
                key: k.into(),
                operator,
                values,
            });
        }
        s
    }

    fn net_around(ip: IpAddr, prefix: u8) -> IpNet {
        match ip {
            IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, prefix.min(32)).expect("prefix").trunc()),
            IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, prefix.min(128)).expect("prefix").trunc()),
        }
    }

    fn ip_block(rng: &mut impl Rng) -> IpBlock {
        let v6 = rng.random_bool(0.4);
        let width: u8 = if v6 { 128 } else { 32 };
        // A pod or node address to build around, or everything.
        let center = if rng.random_bool(0.8) {
            pod_ips(rng.random_range(0..9), rng.random_range(0..3))[usize::from(v6)]
        } else {
            node_ips(rng.random_range(0..2))[usize::from(v6)]
        };
        let prefix = if rng.random_bool(0.1) {
            0
        } else {
            width - rng.random_range(0..=8u8)
        };
        let cidr = net_around(center, prefix);
        let mut except = Vec::new();
        for _ in 0..rng.random_range(0..=2) {
            if prefix >= width {
                break;
            }
            let inner_prefix = rng.random_range(prefix + 1..=width);
            let inner_center = if rng.random_bool(0.7) {
                pod_ips(rng.random_range(0..9), rng.random_range(0..3))[usize::from(v6)]
            } else {
                center
            };
            let e = net_around(inner_center, inner_prefix);
            if cidr.contains(&e.network()) {
                except.push(e);
            }
        }
        IpBlock { cidr, except }
    }

    fn peer(rng: &mut impl Rng) -> Peer {
        match rng.random_range(0..20) {
            0..=6 => Peer::Pods {
                namespace_selector: None,
                pod_selector: Some(selector(rng, false)),
            },
            7..=10 => Peer::Pods {
                namespace_selector: Some(selector(rng, true)),
                pod_selector: None,
            },
            11..=14 => Peer::Pods {
                namespace_selector: Some(selector(rng, true)),
                pod_selector: Some(selector(rng, false)),
            },
            _ => Peer::IpBlock(ip_block(rng)),
        }
    }

    fn port(rng: &mut impl Rng) -> PortMatch {
        let protocol = match rng.random_range(0..10) {
            0..=5 => TCP,
            6..=8 => UDP,
            _ => SCTP,
        };
        let port = match rng.random_range(0..10) {
            0..=2 => {
                let p = *[53u16, 80, 81, 82, 8080].choose(rng).expect("non-empty");
                PortSpec::Range { from: p, to: p }
            }
            3 | 4 => {
                let from = rng.random_range(79..=81u16);
                PortSpec::Range {
                    from,
                    to: from + rng.random_range(0..=3),
                }
            }
            5..=7 => PortSpec::Named(
                ["http", "dns", "metrics", "nope"]
                    .choose(rng)
                    .expect("non-empty")
                    .to_string(),
            ),
            _ => PortSpec::Any,
        };
        PortMatch { protocol, port }
    }

    fn rule(rng: &mut impl Rng) -> palisade_model::Rule {
        let mut r = palisade_model::Rule::default();
        if rng.random_bool(0.7) {
            for _ in 0..rng.random_range(1..=3) {
                r.peers.push(peer(rng));
            }
        }
        if rng.random_bool(0.65) {
            for _ in 0..rng.random_range(1..=2) {
                r.ports.push(port(rng));
            }
        }
        r
    }

    fn rules(rng: &mut impl Rng) -> Vec<palisade_model::Rule> {
        if rng.random_bool(0.2) {
            return Vec::new();
        }
        (0..rng.random_range(1..=3)).map(|_| rule(rng)).collect()
    }

    /// A policy named `name` in namespace `ns`.
    pub fn policy(rng: &mut impl Rng, ns: &str, name: &str) -> NetworkPolicy {
        let pod_selector = selector(rng, false);
        let ingress = rules(rng);
        let egress = rules(rng);
        // §2: policyTypes absent (or empty) half the time, else an explicit subset.
        let (isolates_ingress, isolates_egress) = match rng.random_range(0..8) {
            0..=3 => (true, !egress.is_empty()),
            4 => (true, false),
            5 => (false, true),
            _ => (true, true),
        };
        NetworkPolicy {
            key: Key::new(ns, name),
            pod_selector,
            isolates_ingress,
            isolates_egress,
            ingress,
            egress,
            // Audit mode now and then: evaluated and reported, never enforced.
            audit: rng.random_range(0..8) == 0,
        }
    }
}

/// A small random cluster for property tests: 1-3 namespaces (sometimes not declared, so
/// only their implicit name label exists), 2-8 pods, 0-6 policies.
pub fn small_cluster(seed: u64) -> Vec<Object> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n_ns = rng.random_range(1..=3);
    let mut out = Vec::new();
    for name in &small::NAMESPACES[..n_ns] {
        if rng.random_bool(0.85) {
            out.push(Object::Namespace(small::namespace(&mut rng, name)));
        }
    }
    for slot in 0..rng.random_range(2..=8) {
        let ns = rng.random_range(0..n_ns);
        out.push(Object::Pod(small::pod(&mut rng, ns, slot)));
    }
    for i in 0..rng.random_range(0..=6) {
        let ns = small::NAMESPACES[rng.random_range(0..n_ns)];
        out.push(Object::NetworkPolicy(small::policy(
            &mut rng,
            ns,
            &format!("np{i}"),
        )));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_sized() {
        let params = GenParams {
            namespaces: 10,
            pods: 200,
            policies: 50,
            ..Default::default()
        };
        let a = generate_cluster(7, params.clone());
        let b = generate_cluster(7, params);
        assert_eq!(a, b);
        let pods = a.iter().filter(|o| matches!(o, Object::Pod(_))).count();
        let pols = a
            .iter()
            .filter(|o| matches!(o, Object::NetworkPolicy(_)))
            .count();
        assert_eq!((pods, pols), (200, 50));
        // Addresses of live non-hostNetwork pods are unique.
        let mut seen = std::collections::HashSet::new();
        for o in &a {
            if let Object::Pod(p) = o
                && !p.host_network
            {
                for ip in &p.ips {
                    assert!(seen.insert(*ip), "duplicate {ip}");
                }
            }
        }
        assert_eq!(small_cluster(3), small_cluster(3));
    }
}
