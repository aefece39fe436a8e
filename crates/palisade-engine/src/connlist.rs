//! Whole-cluster connectivity: for every ordered pair of pods, and between pods and the
//! external address blocks that ipBlocks mention, the ports on which a connection is
//! allowed.
//!
//! Pods are grouped into classes that no policy can tell apart (namespace, labels, ports,
//! which ipBlocks hold their addresses), so the work grows with distinct classes, not with
//! pairs of pods. A dual-stack pair is allowed on a port if it is allowed over either
//! family; a pair without addresses is evaluated with ipBlocks matching nothing; a pod
//! without addresses paired with one that has some is evaluated in each of the latter's
//! families; two pods with addresses but no family in common have no connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use palisade_model::{Direction, IpBlock, IpFamily, Labels, NetworkPolicy, Peer, Pod, Rule};

use crate::matching::{PeerView, rule_peers_match, rule_port_ranges};
use crate::ports::PortRanges;
use crate::state::ClusterState;

/// One allowed connection of the list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Connection {
    /// `NS/NAME` or a CIDR.
    pub src: String,
    pub dst: String,
    pub allowed: PortRanges,
}

/// Every ipBlock of every policy, for class keys and external endpoints.
fn ip_blocks(state: &ClusterState) -> Vec<&IpBlock> {
    let mut blocks = BTreeSet::new();
    for policy in state.policies() {
        for d in Direction::BOTH {
            for rule in policy.rules(d) {
                for peer in &rule.peers {
                    if let Peer::IpBlock(b) = peer {
                        blocks.insert(b);
                    }
                }
            }
        }
    }
    blocks.into_iter().collect()
}

/// The evaluation families of a pair: those in which both have an address, a pod without
/// any address (a workload on disk) being assumed to have every family; `None` when
/// neither has an address (ipBlocks match nothing). Two pods with addresses but no family
/// in common cannot connect at all.
fn pair_families(a: &Pod, b: &Pod) -> Vec<Option<IpFamily>> {
    if a.ips.is_empty() && b.ips.is_empty() {
        return vec![None];
    }
    let has = |p: &Pod, f: IpFamily| p.ips.is_empty() || p.ip(f).is_some();
    [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .filter(|f| has(a, *f) && has(b, *f))
        .map(Some)
        .collect()
}

#[derive(Debug)]
struct Class<'a> {
    rep: &'a Pod,
    members: Vec<String>,
    namespace_labels: Labels,
}

/// A rule of a policy, as evaluated against classes.
#[derive(Debug)]
struct RuleEntry<'a> {
    policy: &'a NetworkPolicy,
    rule: &'a Rule,
    /// Ports, when they do not depend on the destination (no named ports).
    static_ports: Option<PortRanges>,
}

struct Evaluator<'a> {
    classes: Vec<Class<'a>>,
    rules: Vec<RuleEntry<'a>>,
    /// Per class and direction: the isolating rules, or None when not isolated.
    class_rules: Vec<[Option<Vec<usize>>; 2]>,
    /// (rule, family) -> which classes its peers match.
    peer_bits: HashMap<(usize, Option<IpFamily>), Vec<bool>>,
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl<'a> Evaluator<'a> {
    fn new(state: &'a ClusterState, blocks: &[&IpBlock]) -> Self {
        // Class key: everything a policy can observe about a pod.
        type ClassKey<'k> = (
            &'k str,
            &'k Labels,
            Vec<palisade_model::ContainerPort>,
            bool,
            Vec<(usize, bool, bool)>,
        );
        let mut by_key: BTreeMap<ClassKey<'a>, usize> = BTreeMap::new();
        let mut classes: Vec<Class<'a>> = Vec::new();
        for pod in state.pods() {
            let mut ports = pod.ports.clone();
            ports.sort();
            let block_sig: Vec<(usize, bool, bool)> = blocks
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let v4 = pod.ip(IpFamily::V4).is_some_and(|ip| b.contains(&ip));
                    let v6 = pod.ip(IpFamily::V6).is_some_and(|ip| b.contains(&ip));
                    (v4 || v6).then_some((i, v4, v6))
                })
                .collect();
            // Which families the pod has matters for pairing, so it is part of the key.
            let fam_sig = (pod.ip(IpFamily::V4).is_some() as usize) << 1
                | pod.ip(IpFamily::V6).is_some() as usize;
            let mut sig = block_sig;
            sig.push((usize::MAX, fam_sig & 2 != 0, fam_sig & 1 != 0));
            let key = (
                pod.key.namespace.as_str(),
                &pod.labels,
                ports,
                pod.host_network,
                sig,
            );
            let idx = *by_key.entry(key).or_insert_with(|| {
                classes.push(Class {
                    rep: pod,
                    members: Vec::new(),
                    namespace_labels: state.namespace_labels(&pod.key.namespace).into_owned(),
                });
                classes.len() - 1
            });
            classes[idx].members.push(pod.key.to_string());
        }
        let mut rules = Vec::new();
        let mut rule_ids: HashMap<(*const NetworkPolicy, Direction), Vec<usize>> = HashMap::new();
        for policy in state.policies() {
            for d in Direction::BOTH {
                let ids = policy
                    .rules(d)
                    .iter()
                    .map(|rule| {
                        let has_named = rule
                            .ports
                            .iter()
                            .any(|p| matches!(p.port, palisade_model::PortSpec::Named(_)));
                        rules.push(RuleEntry {
                            policy,
                            rule,
                            static_ports: (!has_named).then(|| rule_port_ranges(rule, None)),
                        });
                        rules.len() - 1
                    })
                    .collect();
                rule_ids.insert((policy as *const _, d), ids);
            }
        }
        let class_rules = classes
            .iter()
            .map(|c| {
                let mut out: [Option<Vec<usize>>; 2] = [None, None];
                if c.rep.host_network {
                    return out; // §11
                }
                for d in Direction::BOTH {
                    // Connectivity as enforced: policies in audit mode do not isolate.
                    let isolating: Vec<&NetworkPolicy> = state
                        .policies_selecting(&c.rep.key)
                        .filter(|p| p.isolates(d) && !p.audit)
                        .collect();
                    if !isolating.is_empty() {
                        out[dir_index(d)] = Some(
                            isolating
                                .iter()
                                .flat_map(|p| rule_ids[&(*p as *const _, d)].iter().copied())
                                .collect(),
                        );
                    }
                }
                out
            })
            .collect();
        Evaluator {
            classes,
            rules,
            class_rules,
            peer_bits: HashMap::new(),
        }
    }

    fn view(&self, class: usize, family: Option<IpFamily>) -> PeerView<'_> {
        let c = &self.classes[class];
        match (c.rep.host_network, family.and_then(|f| c.rep.ip(f))) {
            (true, Some(ip)) => PeerView::Ip(ip),
            _ => PeerView::Pod {
                pod: c.rep,
                namespace_labels: &c.namespace_labels,
                family,
            },
        }
    }

    fn rule_matches_class(&mut self, rule: usize, family: Option<IpFamily>, class: usize) -> bool {
        if !self.peer_bits.contains_key(&(rule, family)) {
            let entry = &self.rules[rule];
            let bits = (0..self.classes.len())
                .map(|c| {
                    // A hostNetwork pod without an address in the family can't be matched.
                    let view = self.view(c, family);
                    if self.classes[c].rep.host_network && matches!(view, PeerView::Pod { .. }) {
                        return entry.rule.peers.is_empty();
                    }
                    rule_peers_match(&entry.policy.key.namespace, entry.rule, &view)
                })
                .collect();
            self.peer_bits.insert((rule, family), bits);
        }
        self.peer_bits[&(rule, family)][class]
    }

    fn rule_ports(&self, rule: usize, destination: Option<&Pod>) -> PortRanges {
        match &self.rules[rule].static_ports {
            Some(p) => p.clone(),
            None => rule_port_ranges(self.rules[rule].rule, destination),
        }
    }

    /// What `subject`'s `direction` side allows towards/from `peer`.
    fn side(
        &mut self,
        subject: usize,
        direction: Direction,
        peer: usize,
        destination: usize,
        family: Option<IpFamily>,
    ) -> PortRanges {
        let Some(rules) = self.class_rules[subject][dir_index(direction)].clone() else {
            return PortRanges::all();
        };
        let mut out = PortRanges::none();
        for r in rules {
            if self.rule_matches_class(r, family, peer) {
                let dst = self.classes[destination].rep;
                out.union_with(
                    &self.rule_ports(r, if dst.host_network { None } else { Some(dst) }),
                );
                if out.is_all() {
                    break;
                }
            }
        }
        out
    }

    fn pair(&mut self, src: usize, dst: usize) -> PortRanges {
        let mut out = PortRanges::none();
        for family in pair_families(self.classes[src].rep, self.classes[dst].rep) {
            let egress = self.side(src, Direction::Egress, dst, dst, family);
            if egress.is_empty() {
                continue;
            }
            let ingress = self.side(dst, Direction::Ingress, src, dst, family);
            out.union_with(&egress.intersect(&ingress));
        }
        out
    }

    /// What `subject` allows with an external address `ip` as its peer.
    fn side_external(&self, subject: usize, direction: Direction, ip: IpAddr) -> PortRanges {
        let Some(rules) = &self.class_rules[subject][dir_index(direction)] else {
            return PortRanges::all();
        };
        let destination = match direction {
            Direction::Ingress => Some(self.classes[subject].rep),
            Direction::Egress => None, // named ports never match an ipBlock destination
        };
        let mut out = PortRanges::none();
        for &r in rules {
            let e = &self.rules[r];
            if rule_peers_match(&e.policy.key.namespace, e.rule, &PeerView::Ip(ip)) {
                out.union_with(&self.rule_ports(r, destination));
            }
        }
        out
    }
}

/// The external endpoints: the address space the mentioned ipBlocks cover, cut at every
/// cidr and except boundary (so each piece is matched alike by every ipBlock), as CIDRs.
pub fn external_blocks(blocks: &[&IpBlock]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        let span = |n: &IpNet| -> (u128, u128) {
            match n {
                IpNet::V4(n) => (
                    u32::from(n.network()).into(),
                    u32::from(n.broadcast()).into(),
                ),
                IpNet::V6(n) => (n.network().into(), n.broadcast().into()),
            }
        };
        let fam_of = |n: &IpNet| {
            if matches!(n, IpNet::V4(_)) {
                IpFamily::V4
            } else {
                IpFamily::V6
            }
        };
        let cidrs: Vec<(u128, u128)> = blocks
            .iter()
            .filter(|b| fam_of(&b.cidr) == family)
            .map(|b| span(&b.cidr))
            .collect();
        let mut cuts: BTreeSet<u128> = BTreeSet::new();
        for b in blocks.iter().filter(|b| fam_of(&b.cidr) == family) {
            for n in std::iter::once(&b.cidr).chain(&b.except) {
                let (a, z) = span(n);
                cuts.insert(a);
                if let Some(next) = z.checked_add(1) {
                    cuts.insert(next);
                }
            }
        }
        let max: u128 = if family == IpFamily::V4 {
            u32::MAX.into()
        } else {
            u128::MAX
        };
        let cuts: Vec<u128> = cuts.into_iter().collect();
        for (i, &start) in cuts.iter().enumerate() {
            let end = cuts.get(i + 1).map_or(max, |n| n - 1);
            if cidrs.iter().any(|&(a, z)| a <= start && end <= z) {
                out.extend(range_to_cidrs(start, end, family));
            }
        }
    }
    out
}

/// The fewest CIDRs covering exactly `[start, end]`.
fn range_to_cidrs(mut start: u128, end: u128, family: IpFamily) -> Vec<IpNet> {
    let bits: u32 = if family == IpFamily::V4 { 32 } else { 128 };
    let mut out = Vec::new();
    loop {
        // Largest aligned block starting at `start` that fits in the range.
        let mut size_bits = if start == 0 {
            bits
        } else {
            start.trailing_zeros().min(bits)
        };
        while size_bits > 0 {
            let last = if size_bits >= 128 {
                u128::MAX
            } else {
                start + ((1u128 << size_bits) - 1)
            };
            if last <= end {
                break;
            }
            size_bits -= 1;
        }
        let prefix = (bits - size_bits) as u8;
        out.push(match family {
            IpFamily::V4 => {
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(start as u32), prefix).expect("prefix <= 32"))
            }
            IpFamily::V6 => {
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(start), prefix).expect("prefix <= 128"))
            }
        });
        let block_last = if size_bits >= 128 {
            u128::MAX
        } else {
            start + ((1u128 << size_bits) - 1)
        };
        if block_last >= end {
            return out;
        }
        start = block_last + 1;
    }
}

/// The connection list, sorted (pods by name, then CIDRs by address), only pairs with at least one allowed connection.
pub fn connlist(state: &ClusterState) -> Vec<Connection> {
    connlist_cut(state, &[])
}

/// Every ipBlock of the state's policies: what [`connlist_cut`] of another state needs so
/// that both cut the external address space alike (`palisade diff`).
pub fn policy_ip_blocks(state: &ClusterState) -> Vec<IpBlock> {
    ip_blocks(state).into_iter().cloned().collect()
}

/// [`connlist`], with the external address space also cut at the boundaries of `extra`
/// (blocks of another state), so that two lists name the same external endpoints.
pub fn connlist_cut(state: &ClusterState, extra: &[IpBlock]) -> Vec<Connection> {
    let blocks = ip_blocks(state);
    let mut cut: Vec<&IpBlock> = blocks.clone();
    cut.extend(extra);
    let mut eval = Evaluator::new(state, &blocks);
    let n = eval.classes.len();
    let mut out = Vec::new();
    for src in 0..n {
        for dst in 0..n {
            let allowed = eval.pair(src, dst);
            if allowed.is_empty() {
                continue;
            }
            for a in &eval.classes[src].members {
                for b in &eval.classes[dst].members {
                    if a != b {
                        out.push(Connection {
                            src: a.clone(),
                            dst: b.clone(),
                            allowed: allowed.clone(),
                        });
                    }
                }
            }
        }
    }
    for net in external_blocks(&cut) {
        let ip = net.network();
        let family = IpFamily::of(&ip);
        for c in 0..n {
            let rep = eval.classes[c].rep;
            // A pod with no address of this family cannot reach it; one with no address at
            // all (a workload on disk) is assumed to have one.
            if !rep.ips.is_empty() && rep.ip(family).is_none() {
                continue;
            }
            let egress = eval.side_external(c, Direction::Egress, ip);
            let ingress = eval.side_external(c, Direction::Ingress, ip);
            for m in &eval.classes[c].members {
                if !egress.is_empty() {
                    out.push(Connection {
                        src: m.clone(),
                        dst: net.to_string(),
                        allowed: egress.clone(),
                    });
                }
                if !ingress.is_empty() {
                    out.push(Connection {
                        src: net.to_string(),
                        dst: m.clone(),
                        allowed: ingress.clone(),
                    });
                }
            }
        }
    }
    out.sort_by_cached_key(|c| (EndpointOrder::of(&c.src), EndpointOrder::of(&c.dst)));
    out
}

/// How one pair's connectivity changed between two states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Added,
    Removed,
    /// Connected in both, on different ports or protocols.
    Changed,
    Unchanged,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
        }
    }
}

/// One pair of [`diff`]: what was allowed before and after (empty when nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionDiff {
    pub src: String,
    pub dst: String,
    pub change: Change,
    pub old: PortRanges,
    pub new: PortRanges,
}

/// The connectivity difference between two states, pair by pair (the pairs of either
/// [`connlist`]), in connlist order. Both lists cut the external address space at the
/// ipBlock boundaries of both states, so an external endpoint names the same addresses on
/// both sides.
pub fn diff(old: &ClusterState, new: &ClusterState) -> Vec<ConnectionDiff> {
    let old_list = connlist_cut(old, &policy_ip_blocks(new));
    let new_list = connlist_cut(new, &policy_ip_blocks(old));
    let mut pairs: BTreeMap<(EndpointOrder, EndpointOrder), ConnectionDiff> = BTreeMap::new();
    for (conns, is_new) in [(old_list, false), (new_list, true)] {
        for c in conns {
            let key = (EndpointOrder::of(&c.src), EndpointOrder::of(&c.dst));
            let entry = pairs.entry(key).or_insert_with(|| ConnectionDiff {
                src: c.src.clone(),
                dst: c.dst.clone(),
                change: Change::Unchanged,
                old: PortRanges::none(),
                new: PortRanges::none(),
            });
            if is_new {
                entry.new = c.allowed;
            } else {
                entry.old = c.allowed;
            }
        }
    }
    pairs
        .into_values()
        .map(|mut d| {
            d.change = match (d.old.is_empty(), d.new.is_empty()) {
                (true, _) => Change::Added,
                (_, true) => Change::Removed,
                _ if d.old == d.new => Change::Unchanged,
                _ => Change::Changed,
            };
            d
        })
        .collect()
}

/// Output order: pods by name, then CIDRs by family, address and prefix length.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EndpointOrder {
    Pod(String),
    Cidr(bool, u128, u8),
}

impl EndpointOrder {
    fn of(s: &str) -> Self {
        match s.parse::<IpNet>() {
            Ok(IpNet::V4(n)) => {
                EndpointOrder::Cidr(false, u32::from(n.network()).into(), n.prefix_len())
            }
            Ok(IpNet::V6(n)) => EndpointOrder::Cidr(true, n.network().into(), n.prefix_len()),
            Err(_) => EndpointOrder::Pod(s.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_minimal_cidrs() {
        let v4 = |s: &str| u128::from(u32::from(s.parse::<Ipv4Addr>().unwrap()));
        let text = |v: Vec<IpNet>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            text(range_to_cidrs(
                v4("10.0.0.0"),
                v4("10.0.255.255"),
                IpFamily::V4
            )),
            ["10.0.0.0/16"]
        );
        assert_eq!(
            text(range_to_cidrs(v4("10.0.0.1"), v4("10.0.0.6"), IpFamily::V4)),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert_eq!(
            text(range_to_cidrs(0, u32::MAX.into(), IpFamily::V4)),
            ["0.0.0.0/0"]
        );
        assert_eq!(text(range_to_cidrs(0, u128::MAX, IpFamily::V6)), ["::/0"]);
    }

    #[test]
    fn external_blocks_cut_at_excepts() {
        let block = IpBlock {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.128.0.0/9".parse().unwrap()],
        };
        let text: Vec<String> = external_blocks(&[&block])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text, ["10.0.0.0/9", "10.128.0.0/9"]);
    }
}
