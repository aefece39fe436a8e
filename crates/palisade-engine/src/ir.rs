//! Compiles the rules one node enforces into the backend-neutral IR ([`palisade_ir`]):
//! selectors expanded to addresses, ipBlock excepts subtracted, named ports resolved.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use palisade_ir as ir;
use palisade_model::{
    Direction, IpBlock, Key, LabelSelector, Labels, NetworkPolicy, Peer, Pod, PortSpec, Protocol,
    Rule,
};

use crate::matching::port_match_ranges;
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

/// A peer set under construction: pod addresses apart, ipBlock ranges per family as
/// integers (IPv4 widened to u128), merged and cut into prefixes on output.
#[derive(Debug, Default, Clone)]
struct AddressRanges {
    addresses: BTreeSet<IpAddr>,
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
        (
            ir::cidr::addr_to_u128(net.network()),
            ir::cidr::addr_to_u128(net.broadcast()),
        )
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
        self.addresses.insert(ip);
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
        let ranges: Vec<ir::IpRange> = [(self.v4, false), (self.v6, true)]
            .into_iter()
            .flat_map(|(spans, v6)| {
                spans.into_iter().map(move |(a, b)| ir::IpRange {
                    first: ir::cidr::u128_to_addr(a, v6),
                    last: ir::cidr::u128_to_addr(b, v6),
                })
            })
            .collect();
        ir::PeerSet {
            addresses: self.addresses,
            blocks: ir::cidr::ranges_to_cidrs(&ranges),
        }
    }
}

/// A rule's peers, as a cache key: `scope` is the policy's namespace when a podSelector
/// stands alone among them (it selects in that namespace), else empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PeersDef {
    scope: String,
    peers: Vec<Peer>,
    /// Egress named ports resolved on the peer pods (empty for a plain peer set).
    named: Vec<palisade_model::PortMatch>,
}

impl PeersDef {
    fn new(policy_ns: &str, rule: &Rule, named: Vec<palisade_model::PortMatch>) -> Self {
        let scoped = rule.peers.is_empty() && !named.is_empty()
            || rule.peers.iter().any(|p| {
                matches!(
                    p,
                    Peer::Pods {
                        namespace_selector: None,
                        ..
                    }
                )
            });
        PeersDef {
            scope: if scoped {
                policy_ns.to_string()
            } else {
                String::new()
            },
            peers: rule.peers.clone(),
            named,
        }
    }

    /// Could `pod` be (or have been) a member? Selector peers see non-hostNetwork pods;
    /// named-port groups also take pods matched by an ipBlock, or by no peers at all.
    fn may_hold(&self, pod: &Pod, ns_labels: &Labels) -> bool {
        if pod.host_network {
            return false;
        }
        if !self.named.is_empty() && self.peers.is_empty() {
            return true;
        }
        self.peers.iter().any(|peer| match peer {
            Peer::Pods {
                namespace_selector,
                pod_selector,
            } => crate::matching::pods_peer_matches(
                &self.scope,
                namespace_selector.as_ref(),
                pod_selector.as_ref(),
                &pod.key.namespace,
                ns_labels,
                &pod.labels,
            ),
            Peer::IpBlock(b) => !self.named.is_empty() && pod.ips.iter().any(|ip| b.contains(ip)),
        })
    }

    fn has_namespace_selector(&self) -> bool {
        self.peers.iter().any(|p| {
            matches!(
                p,
                Peer::Pods {
                    namespace_selector: Some(_),
                    ..
                }
            )
        })
    }
}

/// Peer sets that outlive one compile, so an update costs what it changes: the agent keeps
/// one per node and tells it what changed ([`PeerCache::pod_changed`],
/// [`PeerCache::namespaces_changed`]); a stale entry is dropped and recomputed on demand.
#[derive(Debug, Default, Clone)]
pub struct PeerCache {
    /// Each entry: (ports the peers were resolved to, the peer set). Plain peer sets have
    /// one entry with all ports.
    sets: HashMap<PeersDef, Vec<NamedPeers>>,
}

impl PeerCache {
    /// Call with the pod as it was (`old`) and as it will be (`new`) before the state
    /// changes; `state` is consulted for namespace labels only.
    pub fn pod_changed(&mut self, state: &ClusterState, old: Option<&Pod>, new: Option<&Pod>) {
        let views: Vec<(&Pod, Labels)> = old
            .into_iter()
            .chain(new)
            .filter(|p| !p.host_network)
            .map(|p| (p, state.namespace_labels(&p.key.namespace).into_owned()))
            .collect();
        // An address taken over from another pod leaves that pod's sets (§10).
        let taken: Vec<IpAddr> = new
            .into_iter()
            .flat_map(|p| {
                p.ips
                    .iter()
                    .filter(|ip| state.ip_owner(ip).is_some_and(|o| *o != p.key))
            })
            .copied()
            .collect();
        self.sets.retain(|def, entries| {
            let touched = views.iter().any(|(pod, labels)| def.may_hold(pod, labels))
                || (!taken.is_empty()
                    && entries
                        .iter()
                        .any(|e| taken.iter().any(|ip| e.set.contains(ip))));
            !touched
        });
    }

    /// Namespace labels changed: every namespaceSelector may match differently.
    pub fn namespaces_changed(&mut self) {
        self.sets.retain(|def, _| !def.has_namespace_selector());
    }

    pub fn clear(&mut self) {
        self.sets.clear();
    }

    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

/// A peer set with its content name (hashing a large set is not free, so it is kept),
/// and the ports it was resolved to (all ports for a plain peer set).
#[derive(Debug, Clone)]
struct NamedPeers {
    ports: PortRanges,
    name: ir::SetId,
    set: ir::PeerSet,
}

impl NamedPeers {
    /// The id names the definition (the rule's peers and scope, and for a named-port
    /// group the ports it resolved to), never the members: it survives pods joining.
    fn new(def: &PeersDef, ports: PortRanges, set: ir::PeerSet) -> Self {
        NamedPeers {
            name: ir::SetId::peer_from_definition(&format!("{def:?}\n{ports:?}")),
            ports,
            set,
        }
    }
}

/// Compiles one node, with caches shared across its endpoints.
struct NodeCompiler<'a, 'c> {
    state: &'a ClusterState,
    cache: &'c mut PeerCache,
    out: ir::NodeRuleset,
    /// Pods a pod-selecting peer matches, by (policy namespace, peer).
    peer_pods: HashMap<(&'a str, &'a Peer), Vec<&'a Pod>>,
    /// What a rule compiles to apart from the subject, by (policy, direction, rule index):
    /// for ingress its peers (ports may resolve on the subject), for egress everything.
    rule_parts: HashMap<(&'a Key, Direction, usize), RuleParts>,
    port_matches: HashMap<PortRanges, ir::PortMatch>,
    /// Compiled directions, by (isolating policies, direction, container ports for ingress).
    endpoint_rules: HashMap<EndpointRulesKey<'a>, ir::DirectionRules>,
    /// Namespaces a namespaceSelector matches.
    selected_namespaces: HashMap<&'a LabelSelector, Vec<String>>,
    namespaces: Vec<String>,
}

type EndpointRulesKey<'a> = (Vec<&'a Key>, Direction, &'a [palisade_model::ContainerPort]);

#[derive(Debug, Clone)]
enum RuleParts {
    IngressPeers(ir::PeerMatch),
    Egress(Vec<(ir::PeerMatch, ir::PortMatch)>),
}

impl<'a, 'c> NodeCompiler<'a, 'c> {
    /// §6: pods (never hostNetwork ones, §11) a selector peer matches.
    fn pods_matching(&mut self, policy_ns: &'a str, peer: &'a Peer) -> &[&'a Pod] {
        if !self.peer_pods.contains_key(&(policy_ns, peer)) {
            let pods = self.compute_pods_matching(policy_ns, peer);
            self.peer_pods.insert((policy_ns, peer), pods);
        }
        &self.peer_pods[&(policy_ns, peer)]
    }

    fn compute_pods_matching(&mut self, policy_ns: &'a str, peer: &'a Peer) -> Vec<&'a Pod> {
        let state = self.state;
        let Peer::Pods {
            namespace_selector,
            pod_selector,
        } = peer
        else {
            return Vec::new();
        };
        // The namespace side is decided once per namespace selector, the pod side per pod.
        let own = [policy_ns.to_string()];
        let namespaces: &[String] = match namespace_selector {
            None => &own,
            Some(s) => {
                if !self.selected_namespaces.contains_key(s) {
                    let matching = self
                        .namespaces
                        .iter()
                        .filter(|ns| s.matches(&state.namespace_labels(ns)))
                        .cloned()
                        .collect();
                    self.selected_namespaces.insert(s, matching);
                }
                &self.selected_namespaces[s]
            }
        };
        let mut pods = Vec::new();
        for ns in namespaces {
            pods.extend(state.pods_in_namespace(ns).filter(|p| {
                !p.host_network && pod_selector.as_ref().is_none_or(|s| s.matches(&p.labels))
            }));
        }
        pods
    }

    /// Pods any of `rule`'s peers match (every pod when the rule has no peers), each with
    /// the addresses it matches by. An ipBlock matches a pod by its address (§6): that pod
    /// is a peer pod too, on its addresses inside the block.
    fn rule_pods(&mut self, policy_ns: &'a str, rule: &'a Rule) -> Vec<(&'a Pod, Vec<IpAddr>)> {
        let state = self.state;
        let all_pods = move || state.pods_unordered().filter(|p| !p.host_network);
        if rule.peers.is_empty() {
            return all_pods().map(|p| (p, p.ips.clone())).collect();
        }
        let mut pods: BTreeMap<&palisade_model::Key, (&'a Pod, BTreeSet<IpAddr>)> = BTreeMap::new();
        for peer in &rule.peers {
            match peer {
                Peer::Pods { .. } => {
                    for pod in self.pods_matching(policy_ns, peer) {
                        let entry = pods.entry(&pod.key).or_insert((pod, BTreeSet::new()));
                        entry.1.extend(pod.ips.iter().copied());
                    }
                }
                Peer::IpBlock(block) => {
                    for pod in all_pods() {
                        for ip in pod.ips.iter().filter(|ip| block.contains(ip)) {
                            pods.entry(&pod.key)
                                .or_insert((pod, BTreeSet::new()))
                                .1
                                .insert(*ip);
                        }
                    }
                }
            }
        }
        pods.into_values()
            .map(|(pod, ips)| (pod, ips.into_iter().collect()))
            .collect()
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

    fn peer_match(&mut self, peers: NamedPeers) -> ir::PeerMatch {
        self.out
            .peer_sets
            .entry(peers.name.clone())
            .or_insert(peers.set);
        ir::PeerMatch::Set(peers.name)
    }

    fn port_match(&mut self, ports: &PortRanges) -> ir::PortMatch {
        if ports.is_all() {
            return ir::PortMatch::Any;
        }
        if let Some(m) = self.port_matches.get(ports) {
            return m.clone();
        }
        let set = ir::PortSet {
            ranges: ports
                .iter()
                .map(|(p, first, last)| ir::PortRange {
                    protocol: ir_protocol(p),
                    first,
                    last,
                })
                .collect(),
        };
        let name = set.id();
        self.out.port_sets.entry(name.clone()).or_insert(set);
        self.port_matches
            .insert(ports.clone(), ir::PortMatch::Set(name.clone()));
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
        let origin = ir::RuleOrigin {
            policy_namespace: policy.key.namespace.clone(),
            policy_name: policy.key.name.clone(),
            direction: ir_direction(direction),
            rule_index: index,
        };
        let cache_key = (&policy.key, direction, index);
        let parts = match self.rule_parts.get(&cache_key) {
            Some(parts) => parts.clone(),
            None => {
                let parts = self.rule_parts_of(policy, direction, rule);
                self.rule_parts.insert(cache_key, parts.clone());
                parts
            }
        };
        match parts {
            // §8: ingress named ports resolve on the subject, the destination.
            RuleParts::IngressPeers(peers) => {
                let ports = crate::matching::rule_port_ranges(rule, Some(subject));
                if !ports.is_empty() {
                    let ports = self.port_match(&ports);
                    rules.push(ir::AllowRule {
                        peers,
                        ports,
                        origin,
                    });
                }
            }
            RuleParts::Egress(allows) => {
                rules.extend(allows.into_iter().map(|(peers, ports)| ir::AllowRule {
                    peers,
                    ports,
                    origin: origin.clone(),
                }));
            }
        }
    }

    /// A rule's peer sets from the persistent cache, computed on a miss: one set with all
    /// ports for plain peers, or one per resolved port group for egress named ports.
    fn cached_sets(
        &mut self,
        ns: &'a str,
        rule: &'a Rule,
        named: Vec<palisade_model::PortMatch>,
    ) -> Vec<NamedPeers> {
        let def = PeersDef::new(ns, rule, named);
        if let Some(sets) = self.cache.sets.get(&def) {
            return sets.clone();
        }
        let sets = if def.named.is_empty() {
            vec![NamedPeers::new(
                &def,
                PortRanges::all(),
                self.rule_addresses(ns, rule).into_peer_set(),
            )]
        } else {
            let named: Vec<&palisade_model::PortMatch> = def.named.iter().collect();
            self.named_port_sets(&def, ns, rule, &named)
        };
        self.cache.sets.insert(def, sets.clone());
        sets
    }

    /// §8: egress named ports resolve on each destination pod, so pods that resolve them
    /// alike share one rule. ipBlock destinations never match.
    fn named_port_sets(
        &mut self,
        def: &PeersDef,
        ns: &'a str,
        rule: &'a Rule,
        named_ports: &[&palisade_model::PortMatch],
    ) -> Vec<NamedPeers> {
        let mut groups: BTreeMap<PortRanges, AddressRanges> = BTreeMap::new();
        for (pod, ips) in self.rule_pods(ns, rule) {
            let mut resolved = PortRanges::none();
            for pm in named_ports {
                resolved.union_with(&port_match_ranges(pm, Some(pod)));
            }
            if !resolved.is_empty() {
                let entry = groups.entry(resolved).or_default();
                ips.iter().for_each(|ip| entry.add_ip(*ip));
            }
        }
        groups
            .into_iter()
            .map(|(ports, addresses)| NamedPeers::new(def, ports, addresses.into_peer_set()))
            .collect()
    }

    /// The subject-independent part of a rule, computed once per compile.
    fn rule_parts_of(
        &mut self,
        policy: &'a NetworkPolicy,
        direction: Direction,
        rule: &'a Rule,
    ) -> RuleParts {
        let ns = policy.key.namespace.as_str();
        let peers_of_rule = |this: &mut Self| {
            if rule.peers.is_empty() {
                return ir::PeerMatch::Any;
            }
            let peers = this.cached_sets(ns, rule, Vec::new()).remove(0);
            this.peer_match(peers)
        };
        if direction == Direction::Ingress {
            return RuleParts::IngressPeers(peers_of_rule(self));
        }
        let named = |pm: &&palisade_model::PortMatch| matches!(pm.port, PortSpec::Named(_));
        let mut allows = Vec::new();
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
            let peers = peers_of_rule(self);
            allows.push((peers, self.port_match(&numeric)));
        }
        let named_ports: Vec<palisade_model::PortMatch> =
            rule.ports.iter().filter(named).cloned().collect();
        if !named_ports.is_empty() {
            for group in self.cached_sets(ns, rule, named_ports) {
                let ports = group.ports.clone();
                let peers = self.peer_match(group);
                allows.push((peers, self.port_match(&ports)));
            }
        }
        RuleParts::Egress(allows)
    }

    fn direction_rules(&mut self, pod: &'a Pod, direction: Direction) -> ir::DirectionRules {
        let (audited, isolating): (Vec<&'a NetworkPolicy>, Vec<&'a NetworkPolicy>) = self
            .state
            .policies_selecting(&pod.key)
            .filter(|p| p.isolates(direction))
            .partition(|p| p.audit);
        // Audited policies matter only where no enforced one isolates (see ir::AuditTier).
        let audited = if isolating.is_empty() {
            audited
        } else {
            Vec::new()
        };
        // Pods under the same policies compile alike, unless ingress named ports resolve on
        // them differently: their container ports are part of the key.
        let ports = if direction == Direction::Ingress {
            pod.ports.as_slice()
        } else {
            &[]
        };
        let memo_key = (
            isolating
                .iter()
                .chain(&audited)
                .map(|p| &p.key)
                .collect::<Vec<_>>(),
            direction,
            ports,
        );
        if let Some(done) = self.endpoint_rules.get(&memo_key) {
            return done.clone();
        }
        let mut rules = Vec::new();
        for policy in &isolating {
            for (index, rule) in policy.rules(direction).iter().enumerate() {
                self.compile_rule(pod, policy, direction, index, rule, &mut rules);
            }
        }
        let audit = (!audited.is_empty()).then(|| {
            let mut rules = Vec::new();
            for policy in &audited {
                for (index, rule) in policy.rules(direction).iter().enumerate() {
                    self.compile_rule(pod, policy, direction, index, rule, &mut rules);
                }
            }
            ir::AuditTier {
                isolated_by: audited.iter().map(|p| p.key.to_string()).collect(),
                rules,
            }
        });
        let done = ir::DirectionRules {
            isolated: !isolating.is_empty(),
            isolated_by: isolating.iter().map(|p| p.key.to_string()).collect(),
            rules,
            audit,
            // NetworkPolicy fills its own tier only; the admin and baseline tiers are for
            // cluster-scoped policy APIs.
            ..Default::default()
        };
        self.endpoint_rules.insert(memo_key, done.clone());
        done
    }
}

impl ClusterState {
    /// Pods a node enforces for: scheduled on it, not hostNetwork, with an address (§10, §11),
    /// sorted by key. Filtered before sorting: a node holds ~100 of the cluster's pods, and
    /// sorting all 10,000 of them was half of a node compile (agent_bench, BENCHMARKS.md).
    pub fn local_pods<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        let mut local: Vec<&Pod> = self
            .pods_unordered()
            .filter(|p| p.node.as_deref() == Some(node) && !p.host_network && !p.ips.is_empty())
            .collect();
        local.sort_by(|a, b| a.key.cmp(&b.key));
        local.into_iter()
    }

    /// The IR for every local pod of `node`.
    pub fn compile_node(&self, node: &str) -> ir::NodeRuleset {
        self.compile_node_with(node, &mut PeerCache::default())
    }

    /// [`Self::compile_node`] reusing (and filling) `cache`, which must have been told of
    /// every pod and namespace change since it was last used.
    pub fn compile_node_with(&self, node: &str, cache: &mut PeerCache) -> ir::NodeRuleset {
        let mut c = NodeCompiler {
            state: self,
            cache,
            out: ir::NodeRuleset {
                node: node.to_string(),
                ..Default::default()
            },
            peer_pods: HashMap::new(),
            rule_parts: HashMap::new(),
            port_matches: HashMap::new(),
            selected_namespaces: HashMap::new(),
            endpoint_rules: HashMap::new(),
            namespaces: self
                .namespace_names()
                .into_iter()
                .map(str::to_string)
                .collect(),
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
    fn except_is_subtracted_into_prefixes() {
        let block = IpBlock {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec![
                "10.1.0.0/16".parse().unwrap(),
                "10.255.255.255/32".parse().unwrap(),
            ],
        };
        let mut r = AddressRanges::default();
        r.add_block(&block);
        let set = r.into_peer_set();
        let text: Vec<String> = set.blocks.iter().map(ToString::to_string).collect();
        assert_eq!(text.first().map(String::as_str), Some("10.0.0.0/16"));
        assert_eq!(text.get(1).map(String::as_str), Some("10.2.0.0/15"));
        assert_eq!(text.last().map(String::as_str), Some("10.255.255.254/32"));
        for probe in ["10.1.2.3", "10.255.255.255", "11.0.0.0"] {
            assert!(!set.contains(&probe.parse().unwrap()), "{probe}");
        }
        for probe in ["10.0.0.1", "10.2.0.0", "10.255.255.254"] {
            assert!(set.contains(&probe.parse().unwrap()), "{probe}");
        }
    }

    #[test]
    fn pod_addresses_stay_apart_from_blocks() {
        let mut r = AddressRanges::default();
        for ip in ["10.0.0.2", "10.0.0.1", "fd00::1"] {
            r.add_ip(ip.parse().unwrap());
        }
        r.add_block(&IpBlock {
            cidr: "10.0.0.0/24".parse().unwrap(),
            except: vec![],
        });
        let set = r.into_peer_set();
        assert_eq!(set.addresses.len(), 3);
        assert_eq!(set.blocks, vec!["10.0.0.0/24".parse::<IpNet>().unwrap()]);
    }
}
