//! Concise constructors for validated model objects.
//!
//! ```
//! use palisade_testkit::build::*;
//!
//! let web = pod("shop", "web").label("app", "web").ip("10.0.0.1").port("http", 8080).build();
//! let deny = policy("shop", "deny-all").build(); // selects {}, isolates ingress
//! let allow = policy("shop", "allow-web")
//!     .select(sel(&[("app", "web")]))
//!     .ingress(rule().from(pods(sel(&[("app", "client")]))).port(tcp_named("http")))
//!     .build();
//! assert_eq!(web.ports[0].port, 8080);
//! assert!(deny.isolates_ingress && !deny.isolates_egress);
//! assert_eq!(allow.ingress.len(), 1);
//! ```

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use palisade_model::{
    ContainerPort, Direction, IpBlock, Key, LabelSelector, Labels, Namespace, NetworkPolicy,
    Object, Operator, Peer, Pod, PodPhase, PortMatch, PortSpec, Protocol, Requirement, Rule,
};

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A namespace (with its implicit name label).
pub fn namespace(name: &str, pairs: &[(&str, &str)]) -> Namespace {
    Namespace::new(name, labels(pairs))
}

// ---- selectors ----

/// A selector with matchLabels only; `sel(&[])` is `{}` (matches everything).
pub fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::from_labels(pairs.iter().copied())
}

/// The empty selector `{}`.
pub fn all() -> LabelSelector {
    LabelSelector::everything()
}

fn requirement(key: &str, operator: Operator, values: &[&str]) -> Requirement {
    Requirement {
        key: key.into(),
        operator,
        values: values
            .iter()
            .map(|v| v.to_string())
            .collect::<BTreeSet<_>>(),
    }
}

/// Chainable matchExpressions on a selector.
pub trait SelectorExt: Sized {
    fn expr(self, key: &str, operator: Operator, values: &[&str]) -> Self;
    fn key_in(self, key: &str, values: &[&str]) -> Self {
        self.expr(key, Operator::In, values)
    }
    fn key_not_in(self, key: &str, values: &[&str]) -> Self {
        self.expr(key, Operator::NotIn, values)
    }
    fn key_exists(self, key: &str) -> Self {
        self.expr(key, Operator::Exists, &[])
    }
    fn key_does_not_exist(self, key: &str) -> Self {
        self.expr(key, Operator::DoesNotExist, &[])
    }
}

impl SelectorExt for LabelSelector {
    fn expr(mut self, key: &str, operator: Operator, values: &[&str]) -> Self {
        self.match_expressions
            .push(requirement(key, operator, values));
        self
    }
}

// ---- peers ----

/// `- podSelector: ...` alone: pods of the policy's namespace.
pub fn pods(pod_selector: LabelSelector) -> Peer {
    Peer::Pods {
        namespace_selector: None,
        pod_selector: Some(pod_selector),
    }
}

/// `- namespaceSelector: ...` alone: every pod of the matching namespaces.
pub fn namespaces(namespace_selector: LabelSelector) -> Peer {
    Peer::Pods {
        namespace_selector: Some(namespace_selector),
        pod_selector: None,
    }
}

/// Both selectors in one peer (AND).
pub fn pods_in(namespace_selector: LabelSelector, pod_selector: LabelSelector) -> Peer {
    Peer::Pods {
        namespace_selector: Some(namespace_selector),
        pod_selector: Some(pod_selector),
    }
}

/// Parses a CIDR; panics on a typo (tests only).
pub fn net(cidr: &str) -> IpNet {
    cidr.parse()
        .unwrap_or_else(|e| panic!("bad CIDR {cidr:?}: {e}"))
}

/// Parses an IP; panics on a typo (tests only).
pub fn ip(addr: &str) -> IpAddr {
    addr.parse()
        .unwrap_or_else(|e| panic!("bad IP {addr:?}: {e}"))
}

/// `- ipBlock: {cidr, except}`.
pub fn ip_block(cidr: &str, except: &[&str]) -> Peer {
    Peer::IpBlock(IpBlock {
        cidr: net(cidr),
        except: except.iter().map(|e| net(e)).collect(),
    })
}

// ---- ports ----

pub fn port_num(protocol: Protocol, port: u16) -> PortMatch {
    PortMatch {
        protocol,
        port: PortSpec::Range {
            from: port,
            to: port,
        },
    }
}

pub fn port_range(protocol: Protocol, from: u16, to: u16) -> PortMatch {
    PortMatch {
        protocol,
        port: PortSpec::Range { from, to },
    }
}

pub fn port_named(protocol: Protocol, name: &str) -> PortMatch {
    PortMatch {
        protocol,
        port: PortSpec::Named(name.into()),
    }
}

/// `- protocol: X` without a port: every port of the protocol.
pub fn port_any(protocol: Protocol) -> PortMatch {
    PortMatch {
        protocol,
        port: PortSpec::Any,
    }
}

pub fn tcp(port: u16) -> PortMatch {
    port_num(Protocol::Tcp, port)
}

pub fn udp(port: u16) -> PortMatch {
    port_num(Protocol::Udp, port)
}

pub fn sctp(port: u16) -> PortMatch {
    port_num(Protocol::Sctp, port)
}

pub fn tcp_range(from: u16, to: u16) -> PortMatch {
    port_range(Protocol::Tcp, from, to)
}

pub fn tcp_named(name: &str) -> PortMatch {
    port_named(Protocol::Tcp, name)
}

// ---- rules ----

/// A rule builder; `rule().build()` (or passing `rule()` itself) is `{}`: every peer, every port.
#[derive(Debug, Clone, Default)]
pub struct RuleBuilder(Rule);

pub fn rule() -> RuleBuilder {
    RuleBuilder::default()
}

impl RuleBuilder {
    /// Adds a `from` entry (ingress).
    pub fn from(mut self, peer: Peer) -> Self {
        self.0.peers.push(peer);
        self
    }

    /// Adds a `to` entry (egress); the same list as `from`.
    pub fn to(self, peer: Peer) -> Self {
        self.from(peer)
    }

    pub fn port(mut self, port: PortMatch) -> Self {
        self.0.ports.push(port);
        self
    }

    pub fn build(self) -> Rule {
        self.0
    }
}

impl From<RuleBuilder> for Rule {
    fn from(b: RuleBuilder) -> Rule {
        b.0
    }
}

// ---- pods ----

#[derive(Debug, Clone)]
pub struct PodBuilder(Pod);

/// A running pod with no labels, no IP, no ports, on no node.
pub fn pod(namespace: &str, name: &str) -> PodBuilder {
    PodBuilder(Pod::new(namespace, name, Labels::new()))
}

impl PodBuilder {
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.labels.insert(key.into(), value.into());
        self
    }

    pub fn labels(mut self, pairs: &[(&str, &str)]) -> Self {
        self.0.labels.extend(labels(pairs));
        self
    }

    /// Adds an address (status.podIPs); call twice for dual-stack.
    pub fn ip(mut self, addr: &str) -> Self {
        self.0.ips.push(ip(addr));
        self
    }

    pub fn ips(mut self, addrs: &[IpAddr]) -> Self {
        self.0.ips.extend_from_slice(addrs);
        self
    }

    /// A named TCP container port.
    pub fn port(self, name: &str, port: u16) -> Self {
        self.container_port(Some(name), port, Protocol::Tcp)
    }

    pub fn container_port(mut self, name: Option<&str>, port: u16, protocol: Protocol) -> Self {
        self.0.ports.push(ContainerPort {
            name: name.map(Into::into),
            port,
            protocol,
        });
        self
    }

    pub fn node(mut self, node: &str) -> Self {
        self.0.node = Some(node.into());
        self
    }

    pub fn host_network(mut self) -> Self {
        self.0.host_network = true;
        self
    }

    pub fn phase(mut self, phase: PodPhase) -> Self {
        self.0.phase = phase;
        self
    }

    pub fn build(self) -> Pod {
        self.0
    }
}

impl From<PodBuilder> for Pod {
    fn from(b: PodBuilder) -> Pod {
        b.0
    }
}

// ---- policies ----

#[derive(Debug, Clone)]
pub struct PolicyBuilder {
    key: Key,
    pod_selector: LabelSelector,
    policy_types: Option<Vec<Direction>>,
    ingress: Vec<Rule>,
    egress: Vec<Rule>,
    audit: bool,
}

/// A policy selecting every pod of its namespace (`podSelector: {}`), with no rules and
/// policyTypes absent, i.e. a default-deny for ingress until rules are added.
pub fn policy(namespace: &str, name: &str) -> PolicyBuilder {
    PolicyBuilder {
        key: Key::new(namespace, name),
        pod_selector: LabelSelector::everything(),
        policy_types: None,
        ingress: Vec::new(),
        egress: Vec::new(),
        audit: false,
    }
}

impl PolicyBuilder {
    /// In audit mode (`palisade.dev/mode: audit`): evaluated and reported, not enforced.
    pub fn audit(mut self) -> Self {
        self.audit = true;
        self
    }

    pub fn select(mut self, selector: LabelSelector) -> Self {
        self.pod_selector = selector;
        self
    }

    pub fn ingress(mut self, rule: impl Into<Rule>) -> Self {
        self.ingress.push(rule.into());
        self
    }

    pub fn egress(mut self, rule: impl Into<Rule>) -> Self {
        self.egress.push(rule.into());
        self
    }

    /// Sets spec.policyTypes explicitly. Without it they are defaulted (§2).
    pub fn types(mut self, types: &[Direction]) -> Self {
        self.policy_types = Some(types.to_vec());
        self
    }

    pub fn build(self) -> NetworkPolicy {
        let (isolates_ingress, isolates_egress) = match &self.policy_types {
            // §2: Ingress, plus Egress if there is at least one egress rule. An empty list is
            // defaulted like an absent one by the API server.
            None => (true, !self.egress.is_empty()),
            Some(t) if t.is_empty() => (true, !self.egress.is_empty()),
            Some(t) => (
                t.contains(&Direction::Ingress),
                t.contains(&Direction::Egress),
            ),
        };
        NetworkPolicy {
            key: self.key,
            pod_selector: self.pod_selector,
            isolates_ingress,
            isolates_egress,
            ingress: self.ingress,
            egress: self.egress,
            audit: self.audit,
        }
    }
}

impl From<PolicyBuilder> for NetworkPolicy {
    fn from(b: PolicyBuilder) -> NetworkPolicy {
        b.build()
    }
}

// ---- object lists ----

/// Namespaces, then pods, then policies, as engine input.
pub fn objects(
    namespaces: impl IntoIterator<Item = Namespace>,
    pods: impl IntoIterator<Item = Pod>,
    policies: impl IntoIterator<Item = NetworkPolicy>,
) -> Vec<Object> {
    namespaces
        .into_iter()
        .map(Object::Namespace)
        .chain(pods.into_iter().map(Object::Pod))
        .chain(policies.into_iter().map(Object::NetworkPolicy))
        .collect()
}

/// The inverse of [`objects`]: the namespaces, pods and policies of a list, in order.
pub fn split(objects: &[Object]) -> (Vec<Namespace>, Vec<Pod>, Vec<NetworkPolicy>) {
    let (mut ns, mut pods, mut pols) = (Vec::new(), Vec::new(), Vec::new());
    for o in objects {
        match o {
            Object::Namespace(n) => ns.push(n.clone()),
            Object::Pod(p) => pods.push(p.clone()),
            Object::NetworkPolicy(p) => pols.push(p.clone()),
        }
    }
    (ns, pods, pols)
}
