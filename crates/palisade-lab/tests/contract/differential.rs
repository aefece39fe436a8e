//! Differential lab test, part of the contract suite: random clusters and policies;
//! every probe's real outcome through the backend under test equals the engine's verdict
//! (`Connected` = allowed), for both address families. Root only (`can_run_root_tests`).
//!
//! One lab (2 nodes, 10 pods in 3 namespaces) serves every iteration. An iteration draws a
//! whole new random world (which pods the engine knows, pod and namespace labels, container
//! ports with named ports, served ports, 2-7 policies as YAML through the model's validation)
//! and then makes two single changes to it (relabel, add/replace/delete a policy, a pod
//! leaving or joining the engine, new container ports). Each of the three states is moved
//! into the kernel through [`Enforcer`] (a full apply once, then incremental updates only)
//! and probed: every ordered pair of distinct lab pods, on every port the destination
//! serves, IPv4 and IPv6.
//!
//! - Verdicts come from a `ClusterState` built afresh from the world's objects, while the
//!   dataplane is fed from one long-lived state updated incrementally: an index bug of the
//!   engine shows up as a mismatch (and the two states' compiled IR are compared too).
//! - Lab pods the engine does not know are probed as bare addresses (`Endpoint::Ip`).
//! - A pod probing itself is skipped: that traffic never leaves its namespace.
//! - Conntrack is never flushed: every probe is a new flow by the lab's own doing (fresh
//!   UDP source ports, see `palisade_lab`'s probe module), as on a real node where old
//!   entries stay.
//! - A probe that connects where the engine denies is a mismatch at once, reported with the
//!   lab's explanation (`Enforcer::explain_probe`: the kernel's conntrack entries, flow
//!   counters and rulesets for that flow): a dataplane that lets through what policy denies
//!   must be explained, not retried (issue 15). A probe that fails where the engine allows
//!   is probed again, alone and with a longer timeout; if that connects, it is counted as a
//!   flake (an allowed probe starved on this small machine), not as a failure.
//!
//! Environment: `PALISADE_DIFF_SEED` (base seed; default random, always printed),
//! `PALISADE_DIFF_ITERATIONS` (default [`DEFAULT_ITERATIONS`]). Iteration `i` draws from
//! seed `base + i`; since the kernel state carries over between iterations, reproduce a
//! failure with the same base seed and at least as many iterations.
//!
//! The stress variant (`stress_long_sequences_under_cpu_load`, issue 15) runs long
//! sequences of single changes (up to [`STRESS_STEPS`] per world) beside busy threads on
//! every core, for a bounded time (`PALISADE_DIFF_STRESS_SECS`, default
//! [`STRESS_SECS`]). It never flushes conntrack, and every pod's kernel has only 16
//! ephemeral ports, so a probe that reused the 5-tuple of an earlier one would ride its
//! conntrack entry at once: each step must be independent by the lab's own doing. A probe
//! that connects where the engine denies is never rechecked: it fails the test with the
//! lab's full explanation (`Enforcer::explain_probe`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::BackendUnderTest;
use ipnet::IpNet;
use palisade_engine::{ClusterState, Endpoint, Flow};
use palisade_lab::enforce::Enforcer;
use palisade_lab::{
    Lab, LabPod, LabSpec, ProbeOutcome, ProbeRequest, can_run_root_tests, diagnose,
};
use palisade_model::load::{Loaded, load_str};
use palisade_model::{
    ContainerPort, IpFamily, Key, Labels, Namespace, NetworkPolicy, Object, Pod, PodPhase,
    PodSource, Protocol,
};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DEFAULT_ITERATIONS: usize = 40;
/// Bound of one probe; denied probes cost exactly this.
const PROBE_TIMEOUT: Duration = Duration::from_millis(600);
/// Bound of the second look at a mismatch.
const RECHECK_TIMEOUT: Duration = Duration::from_millis(2500);

/// Stress variant: seconds of probing (then the current step finishes).
const STRESS_SECS: u64 = 75;
/// Stress variant: single changes in a row on one world before a new world.
const STRESS_STEPS: usize = 25;

/// Mismatches reported with the lab's full explanation (rulesets included).
const EXPLAINED_MISMATCHES: usize = 5;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const LAB_PODS: [&str; 10] = [
    "x/a", "x/b", "x/c", "x/d", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

fn key(s: &str) -> Key {
    s.parse().expect("valid key")
}

// ---- the world: what the engine is told, and what the lab serves ----

#[derive(Debug, Clone)]
struct World {
    /// `None`: not declared (only the implicit name label exists).
    namespaces: BTreeMap<String, Option<Labels>>,
    /// Pods the engine knows. The other lab pods are bare addresses to it.
    pods: BTreeMap<Key, Pod>,
    /// Container ports of every lab pod (kept for absent ones, so they can come back).
    container_ports: BTreeMap<Key, Vec<ContainerPort>>,
    /// What every lab pod serves: its container ports, sometimes one undeclared port more.
    served: BTreeMap<Key, Vec<(u16, Protocol)>>,
    /// Policies with the YAML they were loaded from.
    policies: BTreeMap<Key, (String, NetworkPolicy)>,
}

impl World {
    fn objects(&self) -> Vec<Object> {
        let mut out = Vec::new();
        for (name, labels) in &self.namespaces {
            if let Some(labels) = labels {
                out.push(Object::Namespace(Namespace::new(name, labels.clone())));
            }
        }
        out.extend(self.pods.values().cloned().map(Object::Pod));
        out.extend(
            self.policies
                .values()
                .map(|(_, p)| Object::NetworkPolicy(p.clone())),
        );
        out
    }

    /// Everything a person needs to replay a failing cell by hand.
    fn describe(&self) -> String {
        let mut s = String::new();
        for (name, labels) in &self.namespaces {
            match labels {
                Some(l) => {
                    let _ = writeln!(s, "namespace {name}: {l:?}");
                }
                None => {
                    let _ = writeln!(s, "namespace {name}: (not declared)");
                }
            }
        }
        for k in LAB_PODS.map(key) {
            let served = &self.served[&k];
            match self.pods.get(&k) {
                Some(p) => {
                    let ports: Vec<String> = p
                        .ports
                        .iter()
                        .map(|c| {
                            format!(
                                "{}={}/{}",
                                c.name.as_deref().unwrap_or("-"),
                                c.port,
                                c.protocol
                            )
                        })
                        .collect();
                    let _ = writeln!(
                        s,
                        "pod {k} {:?} on {} labels {:?} ports [{}] serves {served:?}",
                        p.ips,
                        p.node.as_deref().unwrap_or("?"),
                        p.labels,
                        ports.join(", ")
                    );
                }
                None => {
                    let _ = writeln!(s, "pod {k}: unknown to the engine, serves {served:?}");
                }
            }
        }
        for (yaml, _) in self.policies.values() {
            s.push_str("---\n");
            s.push_str(yaml);
        }
        s
    }
}

/// The random source of one iteration, and what it needs to know of the lab.
struct Gen<'a> {
    rng: ChaCha8Rng,
    lab: &'a Lab,
    next_policy: usize,
}

impl Gen<'_> {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        *items.choose(&mut self.rng).expect("non-empty")
    }

    fn pod_labels(&mut self) -> Labels {
        let mut l = Labels::new();
        if self.chance(0.85) {
            l.insert("app".into(), self.pick(&["web", "api", "db"]).into());
        }
        if self.chance(0.6) {
            l.insert("tier".into(), self.pick(&["front", "back"]).into());
        }
        if self.chance(0.25) {
            l.insert("canary".into(), "true".into());
        }
        l
    }

    fn namespace_labels(&mut self) -> Option<Labels> {
        if self.chance(0.15) {
            return None;
        }
        let mut l = Labels::new();
        if self.chance(0.8) {
            l.insert("team".into(), self.pick(&["red", "blue"]).into());
        }
        if self.chance(0.6) {
            l.insert("env".into(), self.pick(&["prod", "dev"]).into());
        }
        Some(l)
    }

    /// Named container ports; names are unique per pod, and so are (port, protocol).
    fn container_ports(&mut self) -> Vec<ContainerPort> {
        let mut out: Vec<ContainerPort> = Vec::new();
        let mut add = |name: &str, port: u16, protocol: Protocol| {
            if !out.iter().any(|c| c.port == port && c.protocol == protocol) {
                out.push(ContainerPort {
                    name: Some(name.to_string()),
                    port,
                    protocol,
                });
            }
        };
        if self.rng.random_bool(0.75) {
            add("http", self.pick(&[80, 8080]), TCP);
        }
        if self.rng.random_bool(0.4) {
            add("alt", self.pick(&[81, 9090]), TCP);
        }
        if self.rng.random_bool(0.6) {
            // Mostly UDP; sometimes the same name on TCP, so protocol mismatches happen.
            if self.rng.random_bool(0.75) {
                add("dns", self.pick(&[53, 5353]), UDP);
            } else {
                add("dns", 53, TCP);
            }
        }
        out
    }

    /// The container ports plus, sometimes, an undeclared port; never nothing.
    fn served(&mut self, ports: &[ContainerPort]) -> Vec<(u16, Protocol)> {
        let mut s: BTreeSet<(u16, Protocol)> = ports.iter().map(|c| (c.port, c.protocol)).collect();
        if s.is_empty() || self.chance(0.3) {
            s.insert(self.pick(&[(8081, TCP), (9090, TCP), (5353, UDP)]));
        }
        s.into_iter().collect()
    }

    fn pod(&mut self, k: &Key, ports: &[ContainerPort]) -> Pod {
        let node = self.lab.pod_node(k).expect("lab pod");
        Pod {
            key: k.clone(),
            labels: self.pod_labels(),
            ips: self.lab.pod_ips(k).to_vec(),
            ports: ports.to_vec(),
            host_network: false,
            node: Some(self.lab.node_names()[node].clone()),
            phase: PodPhase::Running,
            source: PodSource::Pod,
        }
    }

    fn world(&mut self) -> World {
        let mut w = World {
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            container_ports: BTreeMap::new(),
            served: BTreeMap::new(),
            policies: BTreeMap::new(),
        };
        for ns in NAMESPACES {
            let labels = self.namespace_labels();
            w.namespaces.insert(ns.to_string(), labels);
        }
        // 6 to 10 of the 10 lab pods are pods of the cluster.
        let present = self.rng.random_range(6..=LAB_PODS.len());
        let mut keys: Vec<Key> = LAB_PODS.map(key).to_vec();
        rand::seq::SliceRandom::shuffle(keys.as_mut_slice(), &mut self.rng);
        for (i, k) in keys.iter().enumerate() {
            let ports = self.container_ports();
            let served = self.served(&ports);
            if i < present {
                let pod = self.pod(k, &ports);
                w.pods.insert(k.clone(), pod);
            }
            w.container_ports.insert(k.clone(), ports);
            w.served.insert(k.clone(), served);
        }
        for _ in 0..self.rng.random_range(2..=7) {
            let (k, yaml, p) = self.policy(None);
            w.policies.insert(k, (yaml, p));
        }
        w
    }

    /// One single change; returns what it did.
    /// One of the world's policies, at random (none when it has none).
    fn existing_policy(&mut self, w: &World) -> Option<Key> {
        w.policies
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .choose(&mut self.rng)
            .cloned()
    }

    fn mutate(&mut self, w: &mut World) -> String {
        loop {
            match self.rng.random_range(0..8) {
                0 | 1 => {
                    let Some(k) = w
                        .pods
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .choose(&mut self.rng)
                        .cloned()
                    else {
                        continue;
                    };
                    let labels = self.pod_labels();
                    w.pods.get_mut(&k).expect("present").labels = labels.clone();
                    return format!("relabel pod {k} to {labels:?}");
                }
                2 => {
                    let ns = self.pick(&NAMESPACES);
                    let labels = self.namespace_labels();
                    w.namespaces.insert(ns.to_string(), labels.clone());
                    return format!("namespace {ns} labels now {labels:?}");
                }
                3 => {
                    let (k, yaml, p) = self.policy(None);
                    w.policies.insert(k.clone(), (yaml, p));
                    return format!("add policy {k}");
                }
                4 => {
                    let Some(k) = self.existing_policy(w) else {
                        continue;
                    };
                    w.policies.remove(&k);
                    return format!("delete policy {k}");
                }
                5 => {
                    let Some(old) = self.existing_policy(w) else {
                        continue;
                    };
                    let (k, yaml, p) = self.policy(Some(old.clone()));
                    w.policies.insert(k, (yaml, p));
                    return format!("replace policy {old}");
                }
                6 => {
                    let k = key(self.pick(&LAB_PODS));
                    if w.pods.remove(&k).is_some() {
                        return format!("pod {k} leaves the engine (an external address now)");
                    }
                    let pod = self.pod(&k, &w.container_ports[&k].clone());
                    w.pods.insert(k.clone(), pod);
                    return format!("pod {k} joins the engine");
                }
                _ => {
                    let k = key(self.pick(&LAB_PODS));
                    let ports = self.container_ports();
                    let served = self.served(&ports);
                    if let Some(p) = w.pods.get_mut(&k) {
                        p.ports = ports.clone();
                    }
                    w.container_ports.insert(k.clone(), ports);
                    w.served.insert(k.clone(), served.clone());
                    return format!("pod {k} container ports changed, serves {served:?}");
                }
            }
        }
    }

    // ---- policies, as YAML (so the model validates them and applies the defaults) ----

    fn selector(&mut self, for_namespaces: bool) -> String {
        if self.chance(0.2) {
            return "{}".to_string();
        }
        let (keys, values): (&[&str], &[&str]) = if for_namespaces {
            (
                &["team", "env", "kubernetes.io/metadata.name"],
                &["red", "blue", "prod", "dev", "x", "y", "z"],
            )
        } else {
            (
                &["app", "tier", "canary"],
                &["web", "api", "db", "front", "back", "true"],
            )
        };
        let mut parts = Vec::new();
        if self.chance(0.6) {
            let k = self.pick(keys);
            let v = self.value_for(k, values);
            parts.push(format!("matchLabels: {{\"{k}\": \"{v}\"}}"));
        }
        if parts.is_empty() || self.chance(0.35) {
            let mut exprs = Vec::new();
            for _ in 0..self.rng.random_range(1..=2) {
                let k = self.pick(keys);
                let op = self.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
                let e = match op {
                    "In" | "NotIn" => {
                        let mut vals = BTreeSet::new();
                        for _ in 0..self.rng.random_range(1..=2) {
                            vals.insert(format!("\"{}\"", self.value_for(k, values)));
                        }
                        let vals: Vec<String> = vals.into_iter().collect();
                        format!(
                            "{{key: \"{k}\", operator: {op}, values: [{}]}}",
                            vals.join(", ")
                        )
                    }
                    _ => format!("{{key: \"{k}\", operator: {op}}}"),
                };
                exprs.push(e);
            }
            parts.push(format!("matchExpressions: [{}]", exprs.join(", ")));
        }
        format!("{{{}}}", parts.join(", "))
    }

    /// A value that makes sense for the key most of the time.
    fn value_for(&mut self, k: &str, any: &[&str]) -> String {
        let fitting: &[&str] = match k {
            "app" => &["web", "api", "db"],
            "tier" => &["front", "back"],
            "canary" => &["true"],
            "team" => &["red", "blue"],
            "env" => &["prod", "dev"],
            "kubernetes.io/metadata.name" => &NAMESPACES,
            _ => any,
        };
        if self.chance(0.9) {
            self.pick(fitting)
        } else {
            self.pick(any)
        }
        .to_string()
    }

    /// An ipBlock around the lab's pod addresses, with excepts inside it.
    fn ip_block(&mut self) -> String {
        let family = if self.chance(0.5) {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        let k = key(self.pick(&LAB_PODS));
        let ip = self.lab.pod_ip(&k, family).expect("dual-stack lab");
        // Prefix lengths: the pod, a few neighbours, the node's pods, the lab, everything.
        let lens: &[u8] = match family {
            IpFamily::V4 => &[32, 29, 24, 15, 0],
            IpFamily::V6 => &[128, 125, 64, 48, 0],
        };
        let i = self.rng.random_range(0..lens.len());
        let cidr = IpNet::new(ip, lens[i]).expect("prefix").trunc();
        let mut excepts: BTreeSet<IpNet> = BTreeSet::new();
        if i > 0 {
            for _ in 0..self.rng.random_range(0..=2) {
                // A pod address inside the block, or a smaller block around one.
                let other = key(self.pick(&LAB_PODS));
                let ip = self.lab.pod_ip(&other, family).expect("dual-stack lab");
                let j = self.rng.random_range(0..i);
                let e = IpNet::new(ip, lens[j]).expect("prefix").trunc();
                if cidr.contains(&e) && e != cidr {
                    excepts.insert(e);
                }
            }
        }
        if excepts.is_empty() {
            format!("{{ipBlock: {{cidr: \"{cidr}\"}}}}")
        } else {
            let ex: Vec<String> = excepts.iter().map(|e| format!("\"{e}\"")).collect();
            format!(
                "{{ipBlock: {{cidr: \"{cidr}\", except: [{}]}}}}",
                ex.join(", ")
            )
        }
    }

    fn peer(&mut self) -> String {
        match self.rng.random_range(0..10) {
            0..=2 => format!("{{podSelector: {}}}", self.selector(false)),
            3..=4 => format!("{{namespaceSelector: {}}}", self.selector(true)),
            5..=7 => format!(
                "{{namespaceSelector: {}, podSelector: {}}}",
                self.selector(true),
                self.selector(false)
            ),
            _ => self.ip_block(),
        }
    }

    fn port(&mut self) -> String {
        let proto = |p: Protocol, explicit: bool| {
            if p == TCP && !explicit {
                String::new()
            } else {
                format!("protocol: {p}, ")
            }
        };
        let explicit = self.chance(0.5);
        match self.rng.random_range(0..10) {
            0..=2 => {
                let (port, p) = self.pick(&[
                    (80, TCP),
                    (81, TCP),
                    (8080, TCP),
                    (8081, TCP),
                    (9090, TCP),
                    (53, UDP),
                    (5353, UDP),
                    (53, TCP),
                ]);
                format!("{{{}port: {port}}}", proto(p, explicit))
            }
            3..=4 => {
                let (from, to, p) = self.pick(&[
                    (80, 81, TCP),
                    (81, 8080, TCP),
                    (8000, 9000, TCP),
                    (1, 1024, TCP),
                    (50, 60, UDP),
                    (53, 5353, UDP),
                    (9090, 9090, TCP),
                ]);
                format!("{{{}port: {from}, endPort: {to}}}", proto(p, explicit))
            }
            5..=8 => {
                // Named: mostly with the protocol the pods declare it with, sometimes not.
                let (name, p) = self.pick(&[
                    ("http", TCP),
                    ("http", TCP),
                    ("alt", TCP),
                    ("dns", UDP),
                    ("dns", TCP),
                    ("http", UDP),
                    ("metrics", TCP),
                ]);
                format!("{{{}port: \"{name}\"}}", proto(p, explicit))
            }
            _ => format!("{{protocol: {}}}", self.pick(&[TCP, UDP])),
        }
    }

    /// One rule as a YAML list item (`  - ...`), `peers_field` being `from` or `to`.
    fn rule(&mut self, peers_field: &str) -> String {
        let mut fields = Vec::new();
        match self.rng.random_range(0..20) {
            0..=1 => {}
            2 => fields.push(format!("{peers_field}: []")),
            _ => {
                let peers: Vec<String> = (0..self.rng.random_range(1..=2))
                    .map(|_| self.peer())
                    .collect();
                fields.push(format!("{peers_field}: [{}]", peers.join(", ")));
            }
        }
        match self.rng.random_range(0..20) {
            0..=3 => {}
            4 => fields.push("ports: []".to_string()),
            _ => {
                let ports: Vec<String> = (0..self.rng.random_range(1..=2))
                    .map(|_| self.port())
                    .collect();
                fields.push(format!("ports: [{}]", ports.join(", ")));
            }
        }
        format!("  - {{{}}}\n", fields.join(", "))
    }

    /// `ingress:`/`egress:` absent, empty, or 1-3 rules.
    fn rules(&mut self, field: &str, peers_field: &str) -> String {
        match self.rng.random_range(0..10) {
            0..=2 => String::new(),
            3 => format!("  {field}: []\n"),
            _ => {
                let mut s = format!("  {field}:\n");
                for _ in 0..self.rng.random_range(1..=3) {
                    s.push_str("  ");
                    s.push_str(&self.rule(peers_field));
                }
                s
            }
        }
    }

    /// A random policy: a new key in a random namespace, or `replace`'s key.
    fn policy(&mut self, replace: Option<Key>) -> (Key, String, NetworkPolicy) {
        let k = replace.unwrap_or_else(|| {
            self.next_policy += 1;
            Key::new(self.pick(&NAMESPACES), format!("p{}", self.next_policy))
        });
        let mut yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: \"{}\", namespace: \"{}\"}}\nspec:\n",
            k.name, k.namespace
        );
        let _ = writeln!(yaml, "  podSelector: {}", self.selector(false));
        match self.rng.random_range(0..4) {
            0 => {}
            1 => yaml.push_str("  policyTypes: [Ingress]\n"),
            2 => yaml.push_str("  policyTypes: [Egress]\n"),
            _ => yaml.push_str("  policyTypes: [Ingress, Egress]\n"),
        }
        let ingress = self.rules("ingress", "from");
        let egress = self.rules("egress", "to");
        yaml.push_str(&ingress);
        yaml.push_str(&egress);
        let policy = parse_policy(&yaml);
        assert_eq!(policy.key, k);
        (k, yaml, policy)
    }
}

fn parse_policy(yaml: &str) -> NetworkPolicy {
    let mut loaded = Loaded::default();
    load_str(yaml, "generated.yaml", &mut loaded);
    assert!(
        loaded.errors.is_empty(),
        "the generator wrote an invalid policy: {:?}\n{yaml}",
        loaded
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    match loaded.into_objects().pop() {
        Some(Object::NetworkPolicy(p)) => p,
        other => panic!("expected one NetworkPolicy from\n{yaml}\ngot {other:?}"),
    }
}

// ---- moving the engine and the lab to a world ----

/// Brings the long-lived incremental `state` to `world` with upserts and deletes only.
fn update_state(state: &mut ClusterState, world: &World) {
    for (name, labels) in &world.namespaces {
        match labels {
            Some(l) => {
                state.upsert_namespace(Namespace::new(name, l.clone()));
            }
            None => {
                state.delete_namespace(name);
            }
        }
    }
    let stale: Vec<Key> = state
        .policies()
        .iter()
        .map(|p| p.key.clone())
        .filter(|k| !world.policies.contains_key(k))
        .collect();
    for k in stale {
        state.delete_policy(&k);
    }
    let gone: Vec<Key> = state
        .pods()
        .iter()
        .map(|p| p.key.clone())
        .filter(|k| !world.pods.contains_key(k))
        .collect();
    for k in gone {
        state.delete_pod(&k);
    }
    for pod in world.pods.values() {
        state.upsert_pod(pod.clone());
    }
    for (_, p) in world.policies.values() {
        state.upsert_policy(p.clone());
    }
}

fn serve(lab: &Lab, world: &World) {
    for (k, ports) in &world.served {
        let summary = lab.serve(k, ports).expect("serve");
        assert_eq!(&summary.serving, ports, "{k} serves what was asked");
    }
}

// ---- probing ----

#[derive(Debug, Clone)]
struct Cell {
    request: ProbeRequest,
    family: IpFamily,
    dst: Key,
    flow: Flow,
}

fn endpoint(lab: &Lab, world: &World, k: &Key, family: IpFamily) -> Endpoint {
    if world.pods.contains_key(k) {
        Endpoint::Pod(k.clone())
    } else {
        Endpoint::Ip(lab.pod_ip(k, family).expect("dual-stack lab"))
    }
}

fn cells(lab: &Lab, world: &World, family: IpFamily) -> Vec<Cell> {
    let mut out = Vec::new();
    for src in LAB_PODS.map(key) {
        for dst in LAB_PODS.map(key) {
            if src == dst {
                continue;
            }
            let to: IpAddr = lab.pod_ip(&dst, family).expect("dual-stack lab");
            for &(port, protocol) in &world.served[&dst] {
                out.push(Cell {
                    request: ProbeRequest::new(src.clone(), to, port, protocol)
                        .with_timeout(PROBE_TIMEOUT),
                    family,
                    dst: dst.clone(),
                    flow: Flow {
                        src: endpoint(lab, world, &src, family),
                        dst: endpoint(lab, world, &dst, family),
                        protocol,
                        port,
                        family: Some(family),
                    },
                });
            }
        }
    }
    out
}

#[derive(Debug, Default)]
struct Tally {
    rounds: usize,
    probes: usize,
    allowed: usize,
    denied: usize,
    flakes: Vec<String>,
    mismatches: Vec<String>,
    incremental_applies: usize,
    full_applies: usize,
}

/// Moves engine, dataplane and servers to `world`, then probes it.
fn step(
    lab: &Lab,
    enforcer: &mut Enforcer<'_>,
    state: &mut ClusterState,
    world: &World,
    context: &str,
    tally: &mut Tally,
) {
    update_state(state, world);
    let fresh = ClusterState::from_objects(&world.objects());
    for node in lab.node_names() {
        assert!(
            state.compile_node(node) == fresh.compile_node(node),
            "{context}: the incrementally updated engine state compiles {node} differently from \
             a fresh one\n{}",
            world.describe()
        );
    }
    serve(lab, world);
    let reports = enforcer
        .enforce(state)
        .unwrap_or_else(|e| panic!("{context}: enforce failed: {e}\n{}", world.describe()));
    let first = tally.full_applies + tally.incremental_applies == 0;
    for (i, (_, report)) in reports.iter().enumerate() {
        if report.full {
            tally.full_applies += 1;
            // After the first apply, a full one means nft rejected the update and the
            // backend fell back: render_update produced something the kernel refused.
            assert!(
                first,
                "{context}: node {i}: the incremental update fell back to a full apply"
            );
        } else {
            tally.incremental_applies += 1;
        }
    }
    let before = tally.mismatches.len();
    probe_round(enforcer, world, &fresh, context, tally);
    if tally.mismatches.len() > before {
        let mut rules = String::new();
        for i in 0..lab.node_count() {
            if let Ok(out) = lab.run_in_node(i, &["nft", "list", "table", "inet", "palisade"], None)
            {
                let _ = writeln!(
                    rules,
                    "--- node {i}:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        eprintln!(
            "{context}: world:\n{}\nkernel rules:\n{rules}",
            world.describe()
        );
    }
}

pub fn random_clusters_real_packets_equal_engine_verdicts(b: &BackendUnderTest) {
    if !can_run_root_tests(true) {
        return;
    }
    let _serial = super::serial();
    let started = Instant::now();
    let base_seed: u64 = match std::env::var("PALISADE_DIFF_SEED") {
        Ok(s) => s.parse().expect("PALISADE_DIFF_SEED: a u64"),
        Err(_) => rand::random(),
    };
    let iterations: usize = std::env::var("PALISADE_DIFF_ITERATIONS")
        .map(|s| s.parse().expect("PALISADE_DIFF_ITERATIONS: a number"))
        .unwrap_or(DEFAULT_ITERATIONS);
    eprintln!(
        "differential: base seed {base_seed} (PALISADE_DIFF_SEED={base_seed}), {iterations} iterations"
    );

    let spec = LabSpec {
        pods: LAB_PODS.map(|k| LabPod::new(key(k))).to_vec(),
        ..LabSpec::default()
    };
    let lab = Lab::create(spec).expect("lab");
    diagnose::install_flow_counters(&lab).expect("flow counters");
    let mut enforcer = Enforcer::new(&lab, |i| (b.make)(lab.node_netns(i)));
    let mut state = ClusterState::new();
    let mut tally = Tally::default();
    let mut next_policy = 0;
    for i in 0..iterations {
        let seed = base_seed.wrapping_add(i as u64);
        let mut g = Gen {
            rng: ChaCha8Rng::seed_from_u64(seed),
            lab: &lab,
            next_policy,
        };
        let mut world = g.world();
        let context = format!("seed {base_seed} iteration {i} (seed {seed}) step 0 (new world)");
        step(
            &lab,
            &mut enforcer,
            &mut state,
            &world,
            &context,
            &mut tally,
        );
        for s in 1..=2 {
            let change = g.mutate(&mut world);
            let context =
                format!("seed {base_seed} iteration {i} (seed {seed}) step {s} ({change})");
            step(
                &lab,
                &mut enforcer,
                &mut state,
                &world,
                &context,
                &mut tally,
            );
        }
        next_policy = g.next_policy;
        eprintln!(
            "differential: iteration {i} done, {} probes so far, {:.1}s",
            tally.probes,
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "differential: base seed {base_seed}: {iterations} iterations, {} rounds, {} probes \
         ({} allowed, {} denied by the engine), {} full and {} incremental applies, {} flakes, \
         {} mismatches, {:.1}s",
        tally.rounds,
        tally.probes,
        tally.allowed,
        tally.denied,
        tally.full_applies,
        tally.incremental_applies,
        tally.flakes.len(),
        tally.mismatches.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        tally.mismatches.is_empty(),
        "base seed {base_seed}: {} probes disagree with the engine:\n{}",
        tally.mismatches.len(),
        tally.mismatches.join("\n")
    );
    // Flakes are explained by load; many of them would mean the test itself is unsound.
    assert!(
        tally.flakes.len() * 100 <= tally.probes,
        "base seed {base_seed}: too many flaky probes ({}):\n{}",
        tally.flakes.len(),
        tally.flakes.join("\n")
    );
}

// ---- the stress variant ----

/// Busy threads, one per core, until dropped (also on a panic).
struct CpuLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuLoad {
    fn start() -> CpuLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut spins = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                    spins
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Probes every cell of both families at once; a probe connecting where the engine denies
/// is a failure at once, explained; one failing where the engine allows is rechecked.
fn probe_round(
    enforcer: &Enforcer<'_>,
    world: &World,
    verdicts: &ClusterState,
    context: &str,
    tally: &mut Tally,
) {
    let lab = enforcer.lab();
    let families = [IpFamily::V4, IpFamily::V6];
    let per_family: Vec<Vec<Cell>> = families.iter().map(|&f| cells(lab, world, f)).collect();
    let outcomes: Vec<Vec<(ProbeOutcome, palisade_lab::ProbeTrace)>> = std::thread::scope(|s| {
        let handles: Vec<_> = per_family
            .iter()
            .map(|cells| {
                s.spawn(move || {
                    let requests: Vec<ProbeRequest> =
                        cells.iter().map(|c| c.request.clone()).collect();
                    lab.probe_many_traced(&requests)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    tally.rounds += 1;
    let mut recheck = Vec::new();
    for (cells, outcomes) in per_family.iter().zip(outcomes) {
        for (cell, (outcome, trace)) in cells.iter().zip(outcomes) {
            let expected = verdicts
                .allows(&cell.flow)
                .unwrap_or_else(|e| panic!("{context}: engine cannot judge {:?}: {e}", cell.flow));
            tally.probes += 1;
            if expected {
                tally.allowed += 1;
            } else {
                tally.denied += 1;
            }
            if outcome.is_connected() == expected {
                continue;
            }
            if expected {
                recheck.push(cell);
                continue;
            }
            let r = &cell.request;
            // Full reports for the first few only: a broken dataplane fails hundreds alike.
            let report = if tally.mismatches.len() < EXPLAINED_MISMATCHES {
                enforcer.explain_probe(r, &outcome, &trace, true)
            } else {
                String::from("(not explained: see the first mismatches)\n")
            };
            let explanation = verdicts
                .explain(&cell.flow)
                .map(|e| e.to_string())
                .unwrap_or_else(|e| e.to_string());
            let line = format!(
                "{context}: {} {} -> {} {}/{}: engine DENIES, probe {outcome}\n{explanation}\n{report}{}",
                cell.family,
                r.from,
                cell.dst,
                r.port,
                r.protocol,
                world.describe()
            );
            eprintln!("MISMATCH {line}");
            tally.mismatches.push(line);
        }
    }
    for cell in recheck {
        let r = cell.request.clone().with_timeout(RECHECK_TIMEOUT);
        let (again, trace) = lab
            .probe_many_traced(std::slice::from_ref(&r))
            .pop()
            .expect("one outcome");
        let line = format!(
            "{context}: {} {} -> {} {}/{}: engine ALLOWS, probe failed, again {again}",
            cell.family, r.from, cell.dst, r.port, r.protocol
        );
        if again.is_connected() {
            eprintln!("flake (an allowed probe starved; recheck connected): {line}");
            tally.flakes.push(line);
        } else {
            let report = if tally.mismatches.len() < EXPLAINED_MISMATCHES {
                enforcer.explain_probe(&r, &again, &trace, true)
            } else {
                String::from("(not explained: see the first mismatches)\n")
            };
            eprintln!("MISMATCH {line}\n{report}");
            tally.mismatches.push(format!("{line}\n{report}"));
        }
    }
}

pub fn stress_long_sequences_under_cpu_load(b: &BackendUnderTest) {
    if !can_run_root_tests(true) {
        return;
    }
    let _serial = super::serial();
    let base_seed: u64 = match std::env::var("PALISADE_DIFF_SEED") {
        Ok(s) => s.parse().expect("PALISADE_DIFF_SEED: a u64"),
        Err(_) => rand::random(),
    };
    let budget = Duration::from_secs(
        std::env::var("PALISADE_DIFF_STRESS_SECS")
            .map(|s| s.parse().expect("PALISADE_DIFF_STRESS_SECS: seconds"))
            .unwrap_or(STRESS_SECS),
    );
    eprintln!("differential stress: base seed {base_seed}, {budget:?} of probing under CPU load");
    let spec = LabSpec {
        pods: LAB_PODS.map(|k| LabPod::new(key(k))).to_vec(),
        ..LabSpec::default()
    };
    let lab = Lab::create(spec).expect("lab");
    // A kernel-chosen source port would repeat within a few probes: see the module doc.
    for k in LAB_PODS.map(key) {
        let out = lab
            .run_in_pod(
                &k,
                &[
                    "sh",
                    "-c",
                    "echo '40000 40015' > /proc/sys/net/ipv4/ip_local_port_range",
                ],
                None,
            )
            .expect("sysctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    diagnose::install_flow_counters(&lab).expect("flow counters");
    let mut enforcer = Enforcer::new(&lab, |i| (b.make)(lab.node_netns(i)));
    let mut state = ClusterState::new();
    let mut tally = Tally::default();
    let mut next_policy = 0;
    let load = CpuLoad::start();
    let started = Instant::now();
    let mut steps = 0;
    'worlds: for i in 0.. {
        let seed = base_seed.wrapping_add(i as u64);
        let mut g = Gen {
            rng: ChaCha8Rng::seed_from_u64(seed),
            lab: &lab,
            next_policy,
        };
        let mut world = g.world();
        let mut change = "new world".to_string();
        for s in 0..=STRESS_STEPS {
            if started.elapsed() >= budget {
                break 'worlds;
            }
            if s > 0 {
                change = g.mutate(&mut world);
            }
            let context =
                format!("stress seed {base_seed} world {i} (seed {seed}) step {s} ({change})");
            update_state(&mut state, &world);
            let fresh = ClusterState::from_objects(&world.objects());
            serve(&lab, &world);
            enforcer
                .enforce(&state)
                .unwrap_or_else(|e| panic!("{context}: enforce failed: {e}"));
            probe_round(&enforcer, &world, &fresh, &context, &mut tally);
            steps += 1;
        }
        next_policy = g.next_policy;
    }
    drop(load);
    eprintln!(
        "differential stress: base seed {base_seed}: {steps} steps, {} probes ({} allowed, {} \
         denied by the engine), {} flakes, {} mismatches, {:.1}s",
        tally.probes,
        tally.allowed,
        tally.denied,
        tally.flakes.len(),
        tally.mismatches.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(steps >= 5, "only {steps} steps ran within {budget:?}");
    assert!(
        tally.mismatches.is_empty(),
        "base seed {base_seed}: {} probes disagree with the engine:\n{}",
        tally.mismatches.len(),
        tally.mismatches.join("\n")
    );
    assert!(
        tally.flakes.len() * 50 <= tally.probes,
        "base seed {base_seed}: too many starved allowed probes ({}):\n{}",
        tally.flakes.len(),
        tally.flakes.join("\n")
    );
}
