//! # palisade-ir
//!
//! The contract between the engine and the dataplanes: for one node, every local endpoint
//! (a pod's IPs) and, per direction, whether it is isolated and which (peer set, port set)
//! pairs it allows. Peer sets and port sets are shared between endpoints and named by their
//! content, so the IR of two nodes (or two moments) can be compared set by set. A content
//! name changes when a member joins; a backend that wants a join to be an element update
//! (nftables does) keys its kernel sets by the [`RuleOrigin`] of the rules using them and
//! diffs elements. Every rule carries its origin so counters and logs can name the policy
//! rule behind them.
//!
//! Semantics are already decided here: named ports are resolved, ipBlock excepts are
//! subtracted, selectors are expanded to addresses. A backend must only translate: it may
//! not depend on the model or the engine, and it must not re-decide what a policy means.
//!
//! Start at [`NodeRuleset`]; backends implement [`Dataplane`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Transport protocols a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Traffic to the endpoint; the peer is the source.
    Ingress,
    /// Traffic from the endpoint; the peer is the destination.
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The policy rule a compiled rule came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleOrigin {
    pub policy_namespace: String,
    pub policy_name: String,
    pub direction: Direction,
    /// Index into spec.ingress or spec.egress.
    pub rule_index: usize,
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {}[{}]",
            self.policy_namespace,
            self.policy_name,
            self.direction.as_str(),
            self.rule_index
        )
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IpRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

/// Addresses a rule matches: CIDRs minus excepts and pod IPs, as sorted, disjoint,
/// non-adjacent ranges (each family separately, IPv4 first).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerSet {
    pub ranges: Vec<IpRange>,
}

/// An inclusive port range of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

/// Ports a rule matches, sorted and merged per protocol. Never empty: a rule whose ports
/// resolve to nothing is dropped by the compiler.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortSet {
    pub ranges: Vec<PortRange>,
}

/// A content-derived name: the same content always gets the same name, on every node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SetName(pub String);

impl fmt::Display for SetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PeerSet {
    pub fn name(&self) -> SetName {
        let mut h = Sha256::new();
        for r in &self.ranges {
            h.update(format!("{}-{};", r.first, r.last));
        }
        SetName(format!("peer_{}", &hex(&h.finalize())[..12]))
    }

    pub fn v4(&self) -> impl Iterator<Item = &IpRange> {
        self.ranges.iter().filter(|r| r.first.is_ipv4())
    }

    pub fn v6(&self) -> impl Iterator<Item = &IpRange> {
        self.ranges.iter().filter(|r| r.first.is_ipv6())
    }
}

impl PortSet {
    pub fn name(&self) -> SetName {
        let mut h = Sha256::new();
        for r in &self.ranges {
            h.update(format!("{}:{}-{};", r.protocol.as_str(), r.first, r.last));
        }
        SetName(format!("port_{}", &hex(&h.finalize())[..12]))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a rule matches on the peer side.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PeerMatch {
    /// Every address (`from`/`to` absent or empty).
    Any,
    Set(SetName),
}

/// What a rule matches on the port side (the destination port of the connection).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortMatch {
    /// Every protocol and port (`ports` absent or empty).
    Any,
    Set(SetName),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllowRule {
    pub peers: PeerMatch,
    pub ports: PortMatch,
    pub origin: RuleOrigin,
}

/// One direction of one endpoint. Not isolated: everything is allowed and `rules` is empty.
/// Isolated: only what some rule allows passes (no rules = deny all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DirectionRules {
    pub isolated: bool,
    /// Policies (namespace/name) that isolate this direction, for logs and explanations.
    pub isolated_by: Vec<String>,
    pub rules: Vec<AllowRule>,
}

/// A local pod as the dataplane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// `namespace/name` of the pod.
    pub name: String,
    /// The pod's addresses (one per family); the dataplane dispatches on them.
    pub ips: Vec<IpAddr>,
    pub ingress: DirectionRules,
    pub egress: DirectionRules,
}

impl Endpoint {
    pub fn direction(&self, d: Direction) -> &DirectionRules {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Everything one node enforces. Sorted maps everywhere: rendering is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRuleset {
    pub node: String,
    /// Keyed by endpoint name.
    pub endpoints: BTreeMap<String, Endpoint>,
    pub peer_sets: BTreeMap<SetName, PeerSet>,
    pub port_sets: BTreeMap<SetName, PortSet>,
}

impl NodeRuleset {
    /// Sets referenced by no rule are dropped, so every set in the ruleset is live.
    pub fn prune_sets(&mut self) {
        let mut peers = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for ep in self.endpoints.values() {
            for rule in ep.ingress.rules.iter().chain(&ep.egress.rules) {
                if let PeerMatch::Set(n) = &rule.peers {
                    peers.insert(n.clone());
                }
                if let PortMatch::Set(n) = &rule.ports {
                    ports.insert(n.clone());
                }
            }
        }
        self.peer_sets.retain(|n, _| peers.contains(n));
        self.port_sets.retain(|n, _| ports.contains(n));
    }

    pub fn stats(&self) -> RulesetStats {
        RulesetStats {
            endpoints: self.endpoints.len(),
            rules: self
                .endpoints
                .values()
                .map(|e| e.ingress.rules.len() + e.egress.rules.len())
                .sum(),
            peer_sets: self.peer_sets.len(),
            port_sets: self.port_sets.len(),
            set_elements: self
                .peer_sets
                .values()
                .map(|s| s.ranges.len())
                .sum::<usize>()
                + self
                    .port_sets
                    .values()
                    .map(|s| s.ranges.len())
                    .sum::<usize>(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesetStats {
    pub endpoints: usize,
    pub rules: usize,
    pub peer_sets: usize,
    pub port_sets: usize,
    pub set_elements: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{backend}: {action} failed: {message}")]
    Apply {
        backend: &'static str,
        action: String,
        message: String,
    },
    #[error("dataplane: {0}")]
    Other(String),
}

/// What an apply did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// True when the whole ruleset was replaced, false when only a diff was sent.
    pub full: bool,
    /// Statements/commands sent to the kernel in the transaction.
    pub operations: usize,
}

/// A dataplane backend: translates the IR and applies it atomically.
pub trait Dataplane: Send {
    fn name(&self) -> &'static str;
    /// Replaces whatever this backend owns with `desired`, in one transaction.
    fn apply_full(&mut self, desired: &NodeRuleset) -> Result<ApplyReport, DataplaneError>;
    /// Moves from `current` (what was last applied) to `desired`, touching only what
    /// changed. The default replaces everything, which is always correct.
    fn apply_update(
        &mut self,
        current: &NodeRuleset,
        desired: &NodeRuleset,
    ) -> Result<ApplyReport, DataplaneError> {
        let _ = current;
        self.apply_full(desired)
    }
    /// Removes everything this backend installed.
    fn remove(&mut self) -> Result<(), DataplaneError>;
}
