//! Compiles the rules one node enforces into the backend-neutral IR ([`palisade_ir`]):
//! selectors expanded to addresses, ipBlock excepts subtracted, named ports resolved.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use palisade_ir as ir;
use palisade_model::{Direction, IpBlock, NetworkPolicy, Peer, Pod, PortSpec, Protocol, Rule};

use crate::matching::{PeerView, peer_matches, port_match_ranges};
use crate::ports::PortRanges;
use crate::state::ClusterState;

fn ir_protocol(p: Protocol) -> ir::Protocol {
    match p {
        Protocol::Tcp => ir::Protocol::Tcp,
        Protocol::Udp => ir::Protocol::Udp,
        Protocol::Sctp => ir::Protocol::Sctp,
    }
}

fn ir_direction(d: Direction) -> ir::Direction {
    match d {
        Direction::Ingress => ir::Direction::Ingress,
        Direction::Egress => ir::Direction::Egress,
    }
}

/// Address ranges per family as integers (IPv4 widened to u128), merged on output.
#[derive(Debug, Default, Clone)]
struct AddressRanges {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

/// Sorts and merges overlapping or adjacent ranges.
fn merge(ranges: &mut Vec<(u128, u128)>) {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match out.last_mut() {
            Some(last) if last.1.checked_add(1).is_none_or(|next| a <= next) => {
                last.1 = last.1.max(b)
            }
            _ => out.push((a, b)),
        }
    }
    *ranges = out;
}

/// Removes `[c, d]` from every range.
fn subtract(ranges: &mut Vec<(u128, u128)>, c: u128, d: u128) {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(a, b) in ranges.iter() {
        if d < a || b < c {
            out.push((a, b));
            continue;
        }
        if a < c {
            out.push((a, c - 1));
        }
        if d < b {
            out.push((d + 1, b));
        }
    }
    *ranges = out;
}

fn block_ranges(block: &IpBlock) -> Vec<(u128, u128)> {
    let span = |net: &IpNet| -> (u128, u128) {
        match net {
            IpNet::V4(n) => (u32::from(n.network()).into(), u32::from(n.broadcast()).into()),
            IpNet::V6(n) => (n.network().into(), n.broadcast().into()),
        }
    };
    let mut r = vec![span(&block.cidr)];
    for e in &block.except {
        let (c, d) = span(e);
        subtract(&mut r, c, d);
    }
    r
}

impl AddressRanges {
    fn add_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self.v4.push((u32::from(a).into(), u32::from(a).into())),
            IpAddr::V6(a) => self.v6.push((a.into(), a.into())),
        }
    }

    fn add_block(&mut self, block: &IpBlock) {
        let ranges = block_ranges(block);
        match block.cidr {
            IpNet::V4(_) => self.v4.extend(ranges),
            IpNet::V6(_) => self.v6.extend(ranges),
        }
    }

    fn into_peer_set(mut self) -> ir::PeerSet {
        merge(&mut self.v4);
        merge(&mut self.v6);
        let v4 = self.v4.into_iter().map(|(a, b)| ir::IpRange {
            first: IpAddr::V4(Ipv4Addr::from(a as u32)),
            last: IpAddr::V4(Ipv4Addr::from(b as u32)),
        });
        let v6 = self.v6.into_iter().map(|(a, b)| ir::IpRange {
            first: IpAddr::V6(Ipv6Addr::from(a)),
            last: IpAddr::V6(Ipv6Addr::from(b)),
        });
        ir::PeerSet { ranges: v4.chain(v6).collect() }
    }
}

/// Compiles one node, with caches shared across its endpoints.
struct NodeCompiler<'a> {
    state: &'a ClusterState,
    out: ir::NodeRuleset,
    /// Pods a pod-selecting peer matches, by (policy namespace, peer).
    peer_pods: HashMap<(&'a str, &'a Peer), Vec<&'a Pod>>,
}

impl<'a> NodeCompiler<'a> {
    /// §6: pods (never hostNetwork ones, §11) a selector peer matches.
    fn pods_matching(&mut self, policy_ns: &'a str, peer: &'a Peer) -> &[&'a Pod] {
        let state = self.state;
        self.peer_pods.entry((policy_ns, peer)).or_insert_with(|| {
            let Peer::Pods { namespace_selector, .. } = peer else { return Vec::new() };
            let namespaces: Vec<&str> = match namespace_selector {
                None => vec![policy_ns],
                Some(_) => state.namespace_names().into_iter().collect(),
            };
            let mut pods = Vec::new();
            for ns in namespaces {
                let labels = state.namespace_labels(ns);
                for pod in state.pods_in_namespace(ns).filter(|p| !p.host_network) {
                    let view = PeerView::Pod { pod, namespace_labels: &labels, family: None };
                    if peer_matches(policy_ns, peer, &view) {
                        pods.push(pod);
                    }
                }
            }
            pods
        })
    }

    /// All pods any of `rule`'s peers match (every pod when the rule has no peers).
    fn rule_pods(&mut self, policy_ns: &'a str, rule: &'a Rule) -> Vec<&'a Pod> {
        if rule.peers.is_empty() {
            return self.state.pods().into_iter().filter(|p| !p.host_network).collect();
        }
        let mut pods: BTreeMap<&palisade_model::Key, &'a Pod> = BTreeMap::new();
        for peer in &rule.peers {
            for pod in self.pods_matching(policy_ns, peer) {
                pods.insert(&pod.key, pod);
            }
        }
        pods.into_values().collect()
    }

    fn rule_addresses(&mut self, policy_ns: &'a str, rule: &'a Rule) -> AddressRanges {
        let mut ranges = AddressRanges::default();
        for peer in &rule.peers {
            match peer {
                Peer::IpBlock(block) => ranges.add_block(block),
                Peer::Pods { .. } => {
                    for pod in self.pods_matching(policy_ns, peer) {
                        pod.ips.iter().for_each(|ip| ranges.add_ip(*ip));
                    }
                }
            }
        }
        ranges
    }

    fn peer_match(&mut self, set: ir::PeerSet) -> ir::PeerMatch {
        let name = set.name();
        self.out.peer_sets.entry(name.clone()).or_insert(set);
        ir::PeerMatch::Set(name)
    }

    fn port_match(&mut self, ports: &PortRanges) -> ir::PortMatch {
        if ports.is_all() {
            return ir::PortMatch::Any;
        }
        let set = ir::PortSet {
            ranges: ports
                .iter()
                .map(|(p, first, last)| ir::PortRange { protocol: ir_protocol(p), first, last })
                .collect(),
        };
        let name = set.name();
        self.out.port_sets.entry(name.clone()).or_insert(set);
        ir::PortMatch::Set(name)
    }

    fn compile_rule(
        &mut self,
        subject: &'a Pod,
        policy: &'a NetworkPolicy,
        direction: Direction,
        index: usize,
        rule: &'a Rule,
        rules: &mut Vec<ir::AllowRule>,
    ) {
        let ns = policy.key.namespace.as_str();
        let origin = ir::RuleOrigin {
            policy_namespace: policy.key.namespace.clone(),
            policy_name: policy.key.name.clone(),
            direction: ir_direction(direction),
            rule_index: index,
        };
        let mut push = |this: &mut Self, peers: ir::PeerMatch, ports: &PortRanges| {
            if !ports.is_empty() {
                let ports = this.port_match(ports);
                rules.push(ir::AllowRule { peers, ports, origin: origin.clone() });
            }
        };
        let named = |pm: &&palisade_model::PortMatch| matches!(pm.port, PortSpec::Named(_));
        match direction {
            // §8: ingress named ports resolve on the subject, the destination.
            Direction::Ingress => {
                let ports = crate::matching::rule_port_ranges(rule, Some(subject));
                let peers = if rule.peers.is_empty() {
                    ir::PeerMatch::Any
                } else {
                    let set = self.rule_addresses(ns, rule).into_peer_set();
                    self.peer_match(set)
                };
                push(self, peers, &ports);
            }
            Direction::Egress => {
                let has_named = rule.ports.iter().any(|pm| named(&pm));
                let numeric: PortRanges = if rule.ports.is_empty() {
                    PortRanges::all()
                } else {
                    let mut r = PortRanges::none();
                    for pm in rule.ports.iter().filter(|pm| !named(pm)) {
                        r.union_with(&port_match_ranges(pm, None));
                    }
                    r
                };
                if !numeric.is_empty() {
                    let peers = if rule.peers.is_empty() {
                        ir::PeerMatch::Any
                    } else {
                        let set = self.rule_addresses(ns, rule).into_peer_set();
                        self.peer_match(set)
                    };
                    push(self, peers, &numeric);
                }
                if has_named {
                    // §8: egress named ports resolve on each destination pod, so pods that
                    // resolve them alike share one rule. ipBlock destinations never match.
                    let mut groups: BTreeMap<PortRanges, AddressRanges> = BTreeMap::new();
                    for pod in self.rule_pods(ns, rule) {
                        let mut resolved = PortRanges::none();
                        for pm in rule.ports.iter().filter(named) {
                            resolved.union_with(&port_match_ranges(pm, Some(pod)));
                        }
                        if !resolved.is_empty() {
                            let entry = groups.entry(resolved).or_default();
                            pod.ips.iter().for_each(|ip| entry.add_ip(*ip));
                        }
                    }
                    for (ports, addresses) in groups {
                        let peers = self.peer_match(addresses.into_peer_set());
                        push(self, peers, &ports);
                    }
                }
            }
        }
    }

    fn direction_rules(&mut self, pod: &'a Pod, direction: Direction) -> ir::DirectionRules {
        let isolating: Vec<&'a NetworkPolicy> =
            self.state.policies_selecting(&pod.key).filter(|p| p.isolates(direction)).collect();
        let mut rules = Vec::new();
        for policy in &isolating {
            for (index, rule) in policy.rules(direction).iter().enumerate() {
                self.compile_rule(pod, policy, direction, index, rule, &mut rules);
            }
        }
        ir::DirectionRules {
            isolated: !isolating.is_empty(),
            isolated_by: isolating.iter().map(|p| p.key.to_string()).collect(),
            rules,
        }
    }
}

impl ClusterState {
    /// Pods a node enforces for: scheduled on it, not hostNetwork, with an address (§10, §11).
    pub fn local_pods<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods().into_iter().filter(move |p| {
            p.node.as_deref() == Some(node) && !p.host_network && !p.ips.is_empty()
        })
    }

    /// The IR for every local pod of `node`.
    pub fn compile_node(&self, node: &str) -> ir::NodeRuleset {
        let mut c = NodeCompiler {
            state: self,
            out: ir::NodeRuleset { node: node.to_string(), ..Default::default() },
            peer_pods: HashMap::new(),
        };
        for pod in self.local_pods(node) {
            let endpoint = ir::Endpoint {
                name: pod.key.to_string(),
                ips: pod.ips.clone(),
                ingress: c.direction_rules(pod, Direction::Ingress),
                egress: c.direction_rules(pod, Direction::Egress),
            };
            c.out.endpoints.insert(endpoint.name.clone(), endpoint);
        }
        c.out.prune_sets();
        c.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn except_is_subtracted_into_ranges() {
        let block = IpBlock {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap(), "10.255.255.255/32".parse().unwrap()],
        };
        let mut r = AddressRanges::default();
        r.add_block(&block);
        let set = r.into_peer_set();
        let text: Vec<String> =
            set.ranges.iter().map(|r| format!("{}-{}", r.first, r.last)).collect();
        assert_eq!(text, ["10.0.0.0-10.0.255.255", "10.2.0.0-10.255.255.254"]);
    }

    #[test]
    fn adjacent_pod_addresses_merge() {
        let mut r = AddressRanges::default();
        for ip in ["10.0.0.2", "10.0.0.1", "10.0.0.4", "fd00::1"] {
            r.add_ip(ip.parse().unwrap());
        }
        let set = r.into_peer_set();
        let text: Vec<String> =
            set.ranges.iter().map(|r| format!("{}-{}", r.first, r.last)).collect();
        assert_eq!(text, ["10.0.0.1-10.0.0.2", "10.0.0.4-10.0.0.4", "fd00::1-fd00::1"]);
    }
}
