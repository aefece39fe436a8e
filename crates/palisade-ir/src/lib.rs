//! # palisade-ir
//!
//! The contract between the engine and the dataplanes, and everything every dataplane
//! needs, written once:
//!
//! - **The IR** ([`NodeRuleset`]): for one node, every local endpoint (a pod's addresses)
//!   and, per direction, the rules that judge its new connections, in ordered tiers
//!   ([`DirectionRules`]): an admin tier (allow, deny or pass, first match wins), the
//!   NetworkPolicy tier (allow-only; isolated endpoints deny what no rule allows) and a
//!   baseline tier. Only the NetworkPolicy tier is filled today; the others are room for
//!   ClusterNetworkPolicy, and backends implement the general form.
//! - **Stable set identity** ([`SetId`]): a peer set is named by its *definition* (the
//!   policy peers that produce it), not by its members, so its id survives pods joining
//!   and leaving. Pod addresses ([`PeerSet::addresses`]) are kept apart from ipBlock
//!   prefixes ([`PeerSet::blocks`]): a pod joining a selector is one address, in every
//!   backend. Port sets are named by content (their content is their definition).
//! - **Invariants** ([`NodeRuleset::validate`]), **membership** ([`PeerSet::contains`]),
//!   ranges as prefixes ([`cidr`]) and the **executable meaning** of a ruleset ([`eval`]):
//!   what a conforming dataplane does with a packet, including which rule it counts.
//! - **Diffs** ([`RulesetDiff`]): what changed between two rulesets, set by set and member
//!   by member; backends render incremental updates from it.
//! - **The [`Dataplane`] trait** and the one **[`Reconciler`]** that drives any backend:
//!   applied state, full retry after a failure, periodic full resync that repairs drift.
//! - **Verdict events** ([`events`]): the stable tags a backend writes into its logging
//!   rules, the reasons they stand for, and the [`events::EventSource`] a backend's
//!   reports arrive on. The audit tier ([`AuditTier`]) carries policies in audit mode.
//!
//! Semantics are already decided here: named ports are resolved, ipBlock excepts are
//! subtracted, selectors are expanded to addresses. A backend must only translate: it may
//! not depend on the model or the engine, and it must not re-decide what a policy means.
//!
//! ## What every backend guarantees (tested by the contract suite in palisade-lab)
//! 1. Packets of established and related connections are accepted before any policy check
//!    (a policy change judges new connections only); packets conntrack calls invalid are
//!    dropped.
//! 2. The egress of an endpoint is checked on its own node (packets from its addresses),
//!    the ingress on its own node (packets to its addresses): pod to pod on one node passes
//!    both checks, across nodes one on each.
//! 3. The node's own traffic to its pods (kubelet probes) is not filtered, and a pod's
//!    traffic to itself never leaves its network namespace.
//! 4. Per packet, a constant number of lookups, whatever the number of policies.
//! 5. An update is seen by packets all at once, and a failed apply leaves the previous
//!    ruleset in force.
//! 6. Every allowed new connection is counted on the rule [`eval`] attributes it to, every
//!    default-deny drop on its endpoint and direction.
//!
//! Start at [`NodeRuleset`]; backends implement [`Dataplane`].

pub mod cidr;
mod diff;
pub mod eval;
pub mod events;
pub mod pieces;
mod reconcile;
mod recording;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use cidr::IpRange;
pub use diff::{EndpointChange, MemberDelta, RulesetDiff};
pub use reconcile::{Reconciled, Reconciler, ReconcilerConfig};
pub use recording::RecordingDataplane;
pub use validate::InvariantError;

/// Transport protocols a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the endpoint; the peer is the source.
    Ingress,
    /// Traffic from the endpoint; the peer is the destination.
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The policy rule a compiled rule came from. Cluster-scoped policies (the admin and
/// baseline tiers) have an empty `policy_namespace`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleOrigin {
    pub policy_namespace: String,
    pub policy_name: String,
    pub direction: Direction,
    /// Index into spec.ingress or spec.egress.
    pub rule_index: usize,
}

impl RuleOrigin {
    /// `namespace/name` of the policy (just `name` for cluster-scoped ones).
    pub fn policy(&self) -> String {
        if self.policy_namespace.is_empty() {
            self.policy_name.clone()
        } else {
            format!("{}/{}", self.policy_namespace, self.policy_name)
        }
    }
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}[{}]",
            self.policy(),
            self.direction.as_str(),
            self.rule_index
        )
    }
}

/// The id of a set: stable for as long as what defines the set exists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SetId(pub String);

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl SetId {
    /// `peer_<hash>` of a definition: the engine passes what produces the set (the peers
    /// of a policy rule, their scope, the ports a named-port group resolved to), never its
    /// members, so the id survives membership changes.
    pub fn peer_from_definition(definition: &str) -> SetId {
        SetId(format!("peer_{}", short_hash(definition.as_bytes())))
    }
}

fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Addresses a rule matches: pod addresses, and prefixes from ipBlocks (cidr minus
/// excepts). A packet's peer matches when it is one of the addresses or inside one of the
/// blocks. Pods keep their own entries even when a block covers them, so that a pod
/// joining or leaving is one element whatever the blocks are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerSet {
    pub addresses: BTreeSet<IpAddr>,
    /// Sorted (IPv4 first, then by network), disjoint, each with its host bits zero.
    pub blocks: Vec<IpNet>,
}

impl PeerSet {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.addresses.contains(ip) || self.blocks.iter().any(|b| b.contains(ip))
    }

    pub fn len(&self) -> usize {
        self.addresses.len() + self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.blocks.is_empty()
    }

    /// The set as sorted, disjoint, merged ranges of one family: what an interval-keyed
    /// backend loads.
    pub fn ranges(&self, v6: bool) -> Vec<IpRange> {
        let mut spans: Vec<(u128, u128)> = self
            .addresses
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .map(|a| (cidr::addr_to_u128(*a), cidr::addr_to_u128(*a)))
            .chain(
                self.blocks
                    .iter()
                    .filter(|b| b.addr().is_ipv6() == v6)
                    .map(|b| {
                        (
                            cidr::addr_to_u128(b.network()),
                            cidr::addr_to_u128(b.broadcast()),
                        )
                    }),
            )
            .collect();
        spans.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(spans.len());
        for (a, b) in spans {
            match out.last_mut() {
                Some(last) if last.1.checked_add(1).is_none_or(|n| a <= n) => {
                    last.1 = last.1.max(b)
                }
                _ => out.push((a, b)),
            }
        }
        out.into_iter()
            .map(|(a, b)| IpRange {
                first: cidr::u128_to_addr(a, v6),
                last: cidr::u128_to_addr(b, v6),
            })
            .collect()
    }
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

impl PortSet {
    /// Port sets are named by content: `port_<hash>`.
    pub fn id(&self) -> SetId {
        let mut text = String::new();
        for r in &self.ranges {
            text.push_str(&format!("{}:{}-{};", r.protocol.as_str(), r.first, r.last));
        }
        SetId(format!("port_{}", short_hash(text.as_bytes())))
    }

    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.ranges
            .iter()
            .any(|r| r.protocol == protocol && r.first <= port && port <= r.last)
    }
}

/// What a rule matches on the peer side.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PeerMatch {
    /// Every address (`from`/`to` absent or empty).
    Any,
    Set(SetId),
}

/// What a rule matches on the port side (the destination port of the connection).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortMatch {
    /// Every protocol and port (`ports` absent or empty), ICMP included.
    Any,
    Set(SetId),
}

/// A NetworkPolicy rule: it only ever allows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllowRule {
    pub peers: PeerMatch,
    pub ports: PortMatch,
    pub origin: RuleOrigin,
}

/// What a rule of the admin or baseline tier does with a packet it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    /// Admin tier only: skip the rest of the admin tier, let NetworkPolicy decide.
    Pass,
}

/// A rule of an ordered tier: the first one that matches decides.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TierRule {
    pub action: Action,
    pub peers: PeerMatch,
    pub ports: PortMatch,
    pub origin: RuleOrigin,
}

/// NetworkPolicies in audit mode (`palisade.dev/mode: audit`) that would isolate a
/// direction no enforced policy isolates: a packet none of `rules` matches is reported as
/// audit-denied, and goes on. (Where an enforced policy isolates, an audited one can only
/// add allows, which are not enforced: nothing to report, so no audit tier.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuditTier {
    /// The audited policies (namespace/name) that would isolate this direction.
    pub isolated_by: Vec<String>,
    pub rules: Vec<AllowRule>,
}

/// One direction of one endpoint, in the order a packet meets the tiers:
/// 1. `admin`, in order: the first matching rule allows, denies, or passes to step 2;
/// 2. NetworkPolicy: when `isolated`, a packet some rule of `rules` matches is allowed and
///    any other is denied (no rules: deny all); when not isolated, go on to step 3;
/// 3. `audit` (only when not isolated): a packet no audit rule matches is reported as
///    audit-denied; every packet goes on to step 4;
/// 4. `baseline`, in order: the first matching rule allows or denies;
/// 5. otherwise allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DirectionRules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin: Vec<TierRule>,
    pub isolated: bool,
    /// Policies (namespace/name) that isolate this direction, for logs and explanations.
    pub isolated_by: Vec<String>,
    /// The NetworkPolicy tier; empty unless `isolated`.
    pub rules: Vec<AllowRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditTier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline: Vec<TierRule>,
}

impl DirectionRules {
    /// Does any tier judge this direction? If not, the backend needs no check at all.
    pub fn is_filtered(&self) -> bool {
        self.isolated || !self.admin.is_empty() || self.audit.is_some() || !self.baseline.is_empty()
    }

    /// Every peer and port match of every tier, with the origin of its rule.
    pub fn matches(&self) -> impl Iterator<Item = (&PeerMatch, &PortMatch, &RuleOrigin)> {
        self.admin
            .iter()
            .map(|r| (&r.peers, &r.ports, &r.origin))
            .chain(self.rules.iter().map(|r| (&r.peers, &r.ports, &r.origin)))
            .chain(
                self.audit
                    .iter()
                    .flat_map(|a| &a.rules)
                    .map(|r| (&r.peers, &r.ports, &r.origin)),
            )
            .chain(
                self.baseline
                    .iter()
                    .map(|r| (&r.peers, &r.ports, &r.origin)),
            )
    }
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
    pub peer_sets: BTreeMap<SetId, PeerSet>,
    pub port_sets: BTreeMap<SetId, PortSet>,
}

impl NodeRuleset {
    /// Sets referenced by no rule are dropped, so every set in the ruleset is live.
    pub fn prune_sets(&mut self) {
        let mut peers = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for ep in self.endpoints.values() {
            for d in Direction::BOTH {
                for (peer, port, _) in ep.direction(d).matches() {
                    if let PeerMatch::Set(n) = peer {
                        peers.insert(n.clone());
                    }
                    if let PortMatch::Set(n) = port {
                        ports.insert(n.clone());
                    }
                }
            }
        }
        self.peer_sets.retain(|n, _| peers.contains(n));
        self.port_sets.retain(|n, _| ports.contains(n));
    }

    /// An endpoint direction with both an audit tier and a baseline tier, if any: the
    /// netfilter backends accept what an audited rule matches, which would skip the
    /// baseline, so they refuse this (nothing fills the baseline tier yet).
    pub fn audit_beside_baseline(&self) -> Option<(&str, Direction)> {
        self.endpoints.values().find_map(|ep| {
            Direction::BOTH.into_iter().find_map(|d| {
                let rules = ep.direction(d);
                (rules.audit.is_some() && !rules.baseline.is_empty())
                    .then_some((ep.name.as_str(), d))
            })
        })
    }

    /// The endpoint holding `ip`, if any.
    pub fn endpoint_of(&self, ip: &IpAddr) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| e.ips.contains(ip))
    }

    pub fn stats(&self) -> RulesetStats {
        RulesetStats {
            endpoints: self.endpoints.len(),
            rules: self
                .endpoints
                .values()
                .map(|e| {
                    Direction::BOTH
                        .iter()
                        .map(|d| e.direction(*d).matches().count())
                        .sum::<usize>()
                })
                .sum(),
            peer_sets: self.peer_sets.len(),
            port_sets: self.port_sets.len(),
            set_elements: self.peer_sets.values().map(PeerSet::len).sum::<usize>()
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
    #[error("{backend}: the ruleset breaks an IR invariant: {source}")]
    Invalid {
        backend: &'static str,
        #[source]
        source: InvariantError,
    },
    #[error("{backend}: {what} is not supported by this backend")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
}

/// What an apply did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// True when the whole ruleset was replaced, false when only a diff was sent.
    pub full: bool,
    /// Statements/commands sent to the kernel in the transaction.
    pub operations: usize,
}

/// Packet counters a backend keeps, read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// New connections allowed, per policy rule.
    pub allowed: BTreeMap<RuleOrigin, Count>,
    /// New connections dropped by default deny, per (endpoint, direction).
    pub default_deny: BTreeMap<(String, Direction), Count>,
    /// New connections that policies in audit mode would have denied (they passed), per
    /// (endpoint, direction).
    pub audit_denied: BTreeMap<(String, Direction), Count>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// A dataplane backend: translates the IR and applies it atomically.
pub trait Dataplane: Send {
    fn name(&self) -> &'static str;
    /// Replaces whatever this backend owns with `desired`, in one transaction.
    fn apply_full(&mut self, desired: &NodeRuleset) -> Result<ApplyReport, DataplaneError>;
    /// Moves the kernel from `current` (what was last applied) to `desired`, touching
    /// only what `diff` (= `RulesetDiff::between(current, desired)`) names, in one
    /// transaction. The default replaces everything, which is always correct.
    fn apply_update(
        &mut self,
        current: &NodeRuleset,
        desired: &NodeRuleset,
        diff: &RulesetDiff,
    ) -> Result<ApplyReport, DataplaneError> {
        let _ = (current, diff);
        self.apply_full(desired)
    }
    /// Removes everything this backend installed.
    fn remove(&mut self) -> Result<(), DataplaneError>;
    /// What the kernel holds of this backend's objects, as canonical text (independent of
    /// creation order, counter values masked): equal texts enforce the same. The contract
    /// suite compares an update's result with a full apply's through it.
    fn kernel_state(&mut self) -> Result<String, DataplaneError> {
        Err(DataplaneError::Unsupported {
            backend: self.name(),
            what: "reading the kernel state",
        })
    }
    /// The packet counters of what is installed.
    fn counters(&mut self) -> Result<Counters, DataplaneError> {
        Err(DataplaneError::Unsupported {
            backend: self.name(),
            what: "reading counters",
        })
    }
    /// Where the verdict events of this backend arrive (see [`events`]). Only a backend
    /// built with events on emits them; the source may be opened before the first apply.
    fn events(&mut self) -> Result<Box<dyn events::EventSource>, DataplaneError> {
        Err(DataplaneError::Unsupported {
            backend: self.name(),
            what: "verdict events",
        })
    }
    /// A reader of this backend's counters that works on another thread while this
    /// dataplane keeps applying: a counter read (nft lists a whole table) must never hold
    /// up enforcement. It reads what the kernel holds and names counters after the latest
    /// successful apply. The default has none: callers then read [`Dataplane::counters`]
    /// between applies.
    fn counter_reader(&mut self) -> Result<Box<dyn CounterReader>, DataplaneError> {
        Err(DataplaneError::Unsupported {
            backend: self.name(),
            what: "reading counters apart from applies",
        })
    }
}

/// Reads a backend's counters apart from the backend (see [`Dataplane::counter_reader`]).
pub trait CounterReader: Send {
    /// The packet counters of what is installed, as [`Dataplane::counters`] reads them.
    fn counters(&mut self) -> Result<Counters, DataplaneError>;
}

/// What a backend's last successful apply planned, shared with its [`CounterReader`]: the
/// kernel's counters are named after it.
pub type PublishedPlan<P> = std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<P>>>>;

/// Reads counters named after the plan in force while they were read: `read` lists the
/// kernel, `name` names a listing after a plan. The plan must be the same before and after
/// the listing; when an apply lands in between, the listing is read once more (should that
/// overlap an apply too, the newer plan names it: at most the counters of what that apply
/// changed are off for one read). Nothing applied yet: no counters.
pub fn read_named_counters<P, L>(
    published: &PublishedPlan<P>,
    mut read: impl FnMut() -> Result<L, DataplaneError>,
    name: impl Fn(&L, &P) -> Counters,
) -> Result<Counters, DataplaneError> {
    let plan = || published.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut before = plan();
    for attempt in 0..2 {
        let Some(planned) = before else {
            return Ok(Counters::default());
        };
        let listing = read()?;
        let after = plan();
        match after {
            Some(now) if std::sync::Arc::ptr_eq(&now, &planned) || attempt == 1 => {
                return Ok(name(&listing, &now));
            }
            _ => before = after,
        }
    }
    Ok(Counters::default())
}

/// Fixtures shared by this crate's unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// `ns/a` at 10.0.0.2, its ingress isolated by `ns/p` with `rules`, its egress open.
    pub fn endpoint_with_ingress(rules: Vec<AllowRule>) -> Endpoint {
        Endpoint {
            name: "ns/a".into(),
            ips: vec!["10.0.0.2".parse().unwrap()],
            ingress: DirectionRules {
                isolated: true,
                isolated_by: vec!["ns/p".into()],
                rules,
                ..Default::default()
            },
            egress: DirectionRules::default(),
        }
    }
}

#[cfg(test)]
mod counter_naming_tests {
    use std::sync::Arc;

    use super::*;

    /// Counters whose only entry names the plan (a number) and the listing read.
    fn named(listing: &u32, plan: &u32) -> Counters {
        let mut c = Counters::default();
        c.default_deny.insert(
            (format!("plan {plan} listing {listing}"), Direction::Ingress),
            Count::default(),
        );
        c
    }

    fn name_of(c: &Counters) -> &str {
        &c.default_deny.keys().next().expect("one entry").0
    }

    #[test]
    fn counters_are_named_after_the_plan_in_force_while_read() {
        let published: PublishedPlan<u32> = PublishedPlan::default();
        let read = |_: ()| Ok::<u32, DataplaneError>(1);
        assert_eq!(
            read_named_counters(&published, || read(()), named).unwrap(),
            Counters::default(),
            "nothing applied: no counters"
        );
        *published.lock().unwrap() = Some(Arc::new(7));
        let c = read_named_counters(&published, || read(()), named).unwrap();
        assert_eq!(name_of(&c), "plan 7 listing 1");

        // An apply lands during the first listing: read again, named after the new plan.
        let mut listings = 0;
        let c = read_named_counters(
            &published,
            || {
                listings += 1;
                if listings == 1 {
                    *published.lock().unwrap() = Some(Arc::new(8));
                }
                Ok(listings)
            },
            named,
        )
        .unwrap();
        assert_eq!(name_of(&c), "plan 8 listing 2");

        // Applies land during both listings: the second is named after the newest plan.
        let mut listings = 0;
        let c = read_named_counters(
            &published,
            || {
                listings += 1;
                *published.lock().unwrap() = Some(Arc::new(8 + listings));
                Ok(listings)
            },
            named,
        )
        .unwrap();
        assert_eq!(name_of(&c), "plan 10 listing 2");
    }
}
