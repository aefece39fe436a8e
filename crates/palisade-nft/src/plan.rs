//! The kernel objects a ruleset stands for (beside the fixed base chain), pure.
//!
//! Per endpoint and filtered direction, one chain. Its NetworkPolicy tier is one lookup
//! per family in a *class map*: `peer . l4proto . dport -> goto <rule chain>`, shared by
//! every endpoint whose rules are the same (same policies, same resolved ports), plus,
//! when some rule takes every port, one lookup of `peer -> goto <rule chain>` for
//! protocols without ports. Overlaps between rules are resolved here, not in the kernel:
//! the elements are disjoint, and each piece goes to the first rule that matches it, the
//! rule [`palisade_ir::eval`] counts. Each rule chain holds the counter of one policy rule.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use palisade_ir::cidr::u128_to_addr;
use palisade_ir::events::{EventConfig, EventTag};
use palisade_ir::{
    Action, AllowRule, Direction, DirectionRules, Endpoint, NodeRuleset, PeerMatch, PortMatch,
    RuleOrigin, SetId, TierRule,
};
use sha2::{Digest, Sha256};

/// nft rejects comments longer than this (NFTNL_UDATA_COMMENT_MAXLEN).
const COMMENT_MAX: usize = 128;
/// Longest sanitized endpoint name kept in a chain name (the hash keeps it unique).
const CHAIN_STEM_MAX: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    pub fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "_v4",
            Family::V6 => "_v6",
        }
    }
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
}

/// The dispatch maps, in the order the base chain consults them.
pub(crate) const DISPATCH: [(&str, Direction, Family); 4] = [
    ("egress_v4", Direction::Egress, Family::V4),
    ("egress_v6", Direction::Egress, Family::V6),
    ("ingress_v4", Direction::Ingress, Family::V4),
    ("ingress_v6", Direction::Ingress, Family::V6),
];

/// A named set or map: its type line and its elements, rendered (sorted, so two plans
/// compare element by element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetDef {
    /// e.g. `ipv4_addr . inet_proto . inet_service : verdict`.
    pub type_spec: String,
    pub is_map: bool,
    pub interval: bool,
    pub elements: BTreeSet<String>,
}

/// What a counter in the table stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CounterOwner {
    /// New connections a policy rule allowed (or, admin/baseline deny rules, dropped).
    Rule(RuleOrigin),
    /// Default-deny drops of an endpoint's direction.
    DefaultDeny(String, Direction),
    /// New connections of an endpoint's direction that audited policies would deny.
    AuditDenied(String, Direction),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainDef {
    pub comment: String,
    pub rules: Vec<String>,
    pub counter: Option<CounterOwner>,
}

/// Every object of the table but the base chain and the table itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    /// Sets and maps (class maps, dispatch maps, sets of the admin/baseline tiers).
    pub sets: BTreeMap<String, Arc<SetDef>>,
    /// Endpoint chains and rule chains.
    pub chains: BTreeMap<String, Arc<ChainDef>>,
    /// Peer map -> the group chains its elements jump to (so a reused map brings its
    /// groups along without recomputing its pieces).
    pub map_groups: BTreeMap<String, Arc<Vec<String>>>,
}

pub(crate) fn short_hash(input: &str, hex_len: usize) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let hex: String = digest
        .iter()
        .take(hex_len.div_ceil(2))
        .map(|b| format!("{b:02x}"))
        .collect();
    hex[..hex_len].to_string()
}

/// `[A-Za-z][A-Za-z0-9_]*`, at most 64 bytes: a conservative subset of nft identifiers.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

/// Lowercase ASCII letters and digits kept, every run of anything else becomes one `_`.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let mut stem: String = out.trim_matches('_').chars().take(CHAIN_STEM_MAX).collect();
    while stem.ends_with('_') {
        stem.pop();
    }
    stem
}

/// `ingress_<ns_pod>_<hash8>`: readable, stable, unique per endpoint name.
pub(crate) fn endpoint_chain(endpoint: &str, direction: Direction) -> String {
    let stem = sanitize(endpoint);
    let hash = short_hash(endpoint, 8);
    if stem.is_empty() {
        format!("{}_{hash}", direction.as_str())
    } else {
        format!("{}_{stem}_{hash}", direction.as_str())
    }
}

/// Rule chains are named `allow_`, `deny_` or `pass_` + hash; endpoint chains start with
/// their direction.
pub(crate) fn is_rule_chain(name: &str) -> bool {
    ["allow_", "deny_", "pass_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Group chains (`group_<hash>`) are entered from peer maps and use a port map.
pub(crate) fn is_group_chain(name: &str) -> bool {
    name.starts_with("group_")
}

/// Peer maps (`peers_<class>_v4`) jump to group chains.
pub(crate) fn is_peer_map(name: &str) -> bool {
    name.starts_with("peers_")
}

/// The chain that counts (and carries out) one rule's verdict.
fn rule_chain(origin: &RuleOrigin, action: Action) -> String {
    let prefix = match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
        Action::Pass => "pass",
    };
    format!("{prefix}_{}", short_hash(&origin.to_string(), 12))
}

/// A quoted nft comment: printable ASCII without quotes or backslashes, at most
/// [`COMMENT_MAX`] characters.
pub(crate) fn comment(text: &str) -> String {
    let mut clean: String = text
        .chars()
        .map(|c| match c {
            '"' | '\\' => '?',
            c if c == ' ' || c.is_ascii_graphic() => c,
            _ => '?',
        })
        .collect();
    if clean.len() > COMMENT_MAX {
        clean.truncate(COMMENT_MAX - 3);
        clean.push_str("...");
    }
    format!("\"{clean}\"")
}

fn addr_text(v: u128, family: Family) -> String {
    u128_to_addr(v, family == Family::V6).to_string()
}

/// One address, a prefix when the range is exactly one, else `first-last`.
fn interval_text(first: u128, last: u128, family: Family) -> String {
    if first == last {
        return addr_text(first, family);
    }
    let bits = if family == Family::V4 { 32 } else { 128 };
    let span = first ^ last;
    if span & span.wrapping_add(1) == 0 && first & span == 0 {
        format!("{}/{}", addr_text(first, family), bits - span.count_ones())
    } else {
        format!("{}-{}", addr_text(first, family), addr_text(last, family))
    }
}

fn port_text(first: u16, last: u16) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// The elements of a port map (`protocol . port : goto allow_<rule>`) and, if a rule of
/// the group takes every port, the chain protocols without ports go to.
fn port_map(rs: &NodeRuleset, rules: &[&AllowRule]) -> (BTreeSet<String>, Option<String>) {
    let pieces = rs.port_pieces(rules);
    let chain = |i: usize| rule_chain(&rules[i].origin, Action::Allow);
    let elements = pieces
        .ports
        .iter()
        .map(|&(protocol, first, last, owner)| {
            format!(
                "{} . {} : goto {}",
                protocol.as_str(),
                port_text(first, last),
                chain(owner)
            )
        })
        .collect();
    (elements, pieces.any.map(chain))
}

/// A group of rules that all match a peer: its chain, shared by every class and endpoint
/// whose rules hold the same group, is named by the group's ports and origins.
fn group_chain(rules: &[&AllowRule]) -> String {
    let mut key = String::new();
    for r in rules {
        key.push_str(&format!("{:?} {}\n", r.ports, r.origin));
    }
    format!("group_{}", short_hash(&key, 12))
}

/// The id of a class: the direction and its NetworkPolicy rules (set ids, not members).
fn class_id(direction: Direction, rules: &[AllowRule]) -> String {
    let mut key = format!("{}\n", direction.as_str());
    for r in rules {
        key.push_str(&format!("{:?} {:?} {}\n", r.peers, r.ports, r.origin));
    }
    short_hash(&key, 12)
}

fn port_map_def(elements: BTreeSet<String>) -> SetDef {
    SetDef {
        type_spec: "inet_proto . inet_service : verdict".into(),
        is_map: true,
        interval: true,
        elements,
    }
}

/// Kernel set names of an IR set used by the admin or baseline tier.
fn tier_peer_set(id: &SetId, family: Family) -> String {
    format!("tier_{}{}", short_hash(&id.0, 12), family.suffix())
}
fn tier_port_set(id: &SetId) -> String {
    format!("tier_{}_ports", short_hash(&id.0, 12))
}

/// Builds plans, reusing class maps of an earlier plan whose sets did not change.
pub(crate) struct Planner<'a> {
    pub rs: &'a NodeRuleset,
    /// Class maps that may be reused: (name -> definition) of an earlier plan.
    pub reuse: Option<&'a Plan>,
    /// Peer sets whose members changed since `reuse` was built.
    pub changed_sets: &'a BTreeSet<SetId>,
    /// Log verdict events (NFLOG, rate-limited in each logging rule).
    pub events: Option<EventConfig>,
}

/// `limit rate ... log group G prefix "<tag>"`: the rule's own limit state makes the rate
/// per chain, i.e. per endpoint and direction for drops, per rule for allows.
fn log_statement(events: &EventConfig, tag: EventTag) -> String {
    format!(
        "limit rate {}/second burst {} packets log prefix \"{tag}\" group {}",
        events.rate_per_second.max(1),
        events.burst.max(1),
        events.nflog_group
    )
}

impl Planner<'_> {
    pub fn plan(&self) -> Plan {
        let rs = self.rs;
        let mut plan = Plan::default();
        let mut dispatch: BTreeMap<&str, BTreeSet<String>> = DISPATCH
            .iter()
            .map(|(n, _, _)| (*n, BTreeSet::new()))
            .collect();
        for ep in rs.endpoints.values() {
            for direction in Direction::BOTH {
                let rules = ep.direction(direction);
                if !rules.is_filtered() {
                    // No tier judges it: no chain, no map entry, the packet goes on.
                    continue;
                }
                let chain = endpoint_chain(&ep.name, direction);
                for ip in &ep.ips {
                    let (map, _, _) = DISPATCH
                        .iter()
                        .find(|(_, d, f)| *d == direction && *f == Family::of(ip))
                        .copied()
                        .unwrap_or(DISPATCH[0]);
                    dispatch
                        .get_mut(map)
                        .map(|m| m.insert(format!("{ip} : jump {chain}")));
                }
                self.endpoint_chains(&mut plan, ep, direction, rules, chain);
            }
        }
        for (name, elements) in dispatch {
            let family = if name.ends_with("_v6") {
                Family::V6
            } else {
                Family::V4
            };
            plan.sets.insert(
                name.to_string(),
                Arc::new(SetDef {
                    type_spec: format!("{} : verdict", family.addr_type()),
                    is_map: true,
                    interval: false,
                    elements,
                }),
            );
        }
        plan
    }

    fn endpoint_chains(
        &self,
        plan: &mut Plan,
        ep: &Endpoint,
        direction: Direction,
        rules: &DirectionRules,
        chain: String,
    ) {
        let families: BTreeSet<Family> = ep.ips.iter().map(Family::of).collect();
        let label = format!("{} {}", ep.name, direction.as_str());
        let mut body = Vec::new();
        // Admin tier: ordered rules; pass jumps past the rest of the tier.
        let rest = format!("{chain}_np");
        for r in &rules.admin {
            self.tier_rule(plan, &families, direction, r, &rest, &mut body);
        }
        let mut tail_chain = chain.clone();
        if !rules.admin.is_empty() {
            body.push(format!("goto {rest}"));
            plan.chains.insert(
                chain.clone(),
                Arc::new(ChainDef {
                    comment: comment(&format!("{label}: admin tier")),
                    rules: std::mem::take(&mut body),
                    counter: None,
                }),
            );
            tail_chain = rest.clone();
        }
        let mut counter = None;
        if rules.isolated {
            self.network_policy_tier(plan, &families, direction, &rules.rules, &mut body);
            let deny = if rules.isolated_by.is_empty() {
                "default deny".to_string()
            } else {
                format!("default deny: {}", rules.isolated_by.join(", "))
            };
            if let Some(events) = &self.events {
                body.push(log_statement(events, EventTag::denied(&ep.name, direction)));
            }
            body.push(format!("counter drop comment {}", comment(&deny)));
            counter = Some(CounterOwner::DefaultDeny(ep.name.clone(), direction));
        } else {
            if let Some(audit) = &rules.audit {
                // What the audited policies allow is accepted here, which skips the
                // baseline tier: NftDataplane refuses an audit tier beside a baseline one.
                self.network_policy_tier(plan, &families, direction, &audit.rules, &mut body);
                if let Some(events) = &self.events {
                    body.push(log_statement(
                        events,
                        EventTag::audit_denied(&ep.name, direction),
                    ));
                }
                let label = format!("audit-denied: {}", audit.isolated_by.join(", "));
                body.push(format!("counter comment {}", comment(&label)));
                counter = Some(CounterOwner::AuditDenied(ep.name.clone(), direction));
            }
            for r in &rules.baseline {
                self.tier_rule(plan, &families, direction, r, &rest, &mut body);
            }
            // Nothing decided: falling off the chain lets the packet go on.
        }
        plan.chains.insert(
            tail_chain,
            Arc::new(ChainDef {
                comment: comment(&label),
                rules: body,
                counter,
            }),
        );
    }

    /// The NetworkPolicy tier of a class (endpoints with the same rules share its maps):
    /// 1. rules naming peers: one lookup of the peer in `peers_<class>` (pieces of the
    ///    address line -> `jump` the chain of the group of rules holding that piece), where
    ///    one lookup of `protocol . port` picks the rule;
    /// 2. rules taking any peer: one lookup of `protocol . port` in `anyports_<class>`,
    ///    then, if one takes every port, `goto` it.
    ///
    /// A packet is counted on the first rule naming peers that allows it, else on the
    /// first rule taking any peer (the order [`palisade_ir::eval`] defines).
    fn network_policy_tier(
        &self,
        plan: &mut Plan,
        families: &BTreeSet<Family>,
        direction: Direction,
        rules: &[AllowRule],
        body: &mut Vec<String>,
    ) {
        let class = class_id(direction, rules);
        let (named, any): (Vec<&AllowRule>, Vec<&AllowRule>) = rules
            .iter()
            .partition(|r| matches!(r.peers, PeerMatch::Set(_)));
        for r in rules {
            self.rule_chain(plan, &r.origin, Action::Allow);
        }
        let field = peer_field(direction);
        if !named.is_empty() {
            for family in families {
                let name = format!("peers_{class}{}", family.suffix());
                self.peer_map(plan, &name, &named, *family);
                body.push(format!("{} {field} vmap @{name}", family.keyword()));
            }
        }
        if !any.is_empty() {
            let (elements, all_ports) = port_map(self.rs, &any);
            if !elements.is_empty() {
                let name = format!("anyports_{class}");
                plan.sets
                    .insert(name.clone(), Arc::new(port_map_def(elements)));
                body.push(format!("meta l4proto . th dport vmap @{name}"));
            }
            if let Some(chain) = all_ports {
                body.push(format!("goto {chain}"));
            }
        }
    }

    /// A class's peer map (reused from the previous plan when none of its sets changed),
    /// and the chains of the rule groups it jumps to.
    fn peer_map(&self, plan: &mut Plan, name: &str, named: &[&AllowRule], family: Family) {
        if plan.sets.contains_key(name) {
            return;
        }
        let unchanged = named.iter().all(|r| match &r.peers {
            PeerMatch::Set(id) => !self.changed_sets.contains(id),
            PeerMatch::Any => true,
        });
        let reused = self
            .reuse
            .filter(|_| unchanged)
            .and_then(|old| Some((old, old.sets.get(name)?, old.map_groups.get(name)?)));
        if let Some((old, map, groups)) = reused {
            // Group chains depend on the rules alone, which the class id fixes.
            for group in groups.iter() {
                if let Some(chain) = old.chains.get(group) {
                    plan.chains.insert(group.clone(), chain.clone());
                }
                let ports = format!("{group}_ports");
                if let Some(set) = old.sets.get(&ports) {
                    plan.sets.insert(ports, set.clone());
                }
            }
            plan.sets.insert(name.to_string(), map.clone());
            plan.map_groups.insert(name.to_string(), groups.clone());
            return;
        }
        let mut elements = BTreeSet::new();
        let mut chains: HashMap<Vec<usize>, String> = HashMap::new();
        for (first, last, group) in self.rs.peer_pieces(named, family == Family::V6) {
            let chain = match chains.get(&group) {
                Some(c) => c.clone(),
                None => {
                    let c = self.group(plan, named, &group);
                    chains.insert(group, c.clone());
                    c
                }
            };
            elements.insert(format!(
                "{} : jump {chain}",
                interval_text(first, last, family)
            ));
        }
        plan.sets.insert(
            name.to_string(),
            Arc::new(SetDef {
                type_spec: format!("{} : verdict", family.addr_type()),
                is_map: true,
                interval: true,
                elements,
            }),
        );
        plan.map_groups
            .insert(name.to_string(), Arc::new(chains.into_values().collect()));
    }

    /// The chain of a group of rules matching a peer: its port lookup, then the rule
    /// taking every port if any. Falling off it returns to the endpoint chain.
    fn group(&self, plan: &mut Plan, named: &[&AllowRule], group: &[usize]) -> String {
        let rules: Vec<&AllowRule> = group.iter().map(|&i| named[i]).collect();
        let chain = group_chain(&rules);
        if plan.chains.contains_key(&chain) {
            return chain;
        }
        let (elements, all_ports) = port_map(self.rs, &rules);
        let mut body = Vec::new();
        if !elements.is_empty() {
            let map = format!("{chain}_ports");
            plan.sets
                .insert(map.clone(), Arc::new(port_map_def(elements)));
            body.push(format!("meta l4proto . th dport vmap @{map}"));
        }
        if let Some(all) = all_ports {
            body.push(format!("goto {all}"));
        }
        let origins: Vec<String> = rules.iter().map(|r| r.origin.to_string()).collect();
        plan.chains.insert(
            chain.clone(),
            Arc::new(ChainDef {
                comment: comment(&origins.join(", ")),
                rules: body,
                counter: None,
            }),
        );
        chain
    }

    fn rule_chain(&self, plan: &mut Plan, origin: &RuleOrigin, action: Action) -> String {
        let name = rule_chain(origin, action);
        if !plan.chains.contains_key(&name) {
            // Egress and ingress are checked in base chains of their own, so an allowed
            // egress accepts and the ingress check still runs.
            let verdict = if action == Action::Deny {
                "drop"
            } else {
                "accept"
            };
            let mut rules = Vec::new();
            if let Some(events) = self.events.as_ref().filter(|e| e.log_allowed)
                && action == Action::Allow
            {
                rules.push(log_statement(events, EventTag::allowed(origin)));
            }
            rules.push(format!(
                "counter {verdict} comment {}",
                comment(&origin.to_string())
            ));
            plan.chains.insert(
                name.clone(),
                Arc::new(ChainDef {
                    comment: comment(&origin.to_string()),
                    rules,
                    counter: Some(CounterOwner::Rule(origin.clone())),
                }),
            );
        }
        name
    }

    /// One ordered admin/baseline rule per family, through kernel sets named by set id.
    fn tier_rule(
        &self,
        plan: &mut Plan,
        families: &BTreeSet<Family>,
        direction: Direction,
        rule: &TierRule,
        rest: &str,
        body: &mut Vec<String>,
    ) {
        let verdict = match rule.action {
            Action::Pass => format!("goto {rest}"),
            action => format!("goto {}", self.rule_chain(plan, &rule.origin, action)),
        };
        let ports = match &rule.ports {
            PortMatch::Any => String::new(),
            PortMatch::Set(id) => {
                let name = tier_port_set(id);
                let elements = self
                    .rs
                    .port_sets
                    .get(id)
                    .map(|s| {
                        s.ranges
                            .iter()
                            .map(|r| {
                                format!("{} . {}", r.protocol.as_str(), port_text(r.first, r.last))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                plan.sets.insert(
                    name.clone(),
                    Arc::new(SetDef {
                        type_spec: "inet_proto . inet_service".into(),
                        is_map: false,
                        interval: true,
                        elements,
                    }),
                );
                format!("meta l4proto . th dport @{name} ")
            }
        };
        match &rule.peers {
            PeerMatch::Any => body.push(format!("{ports}{verdict}")),
            PeerMatch::Set(id) => {
                for family in families {
                    let name = tier_peer_set(id, *family);
                    let elements = self
                        .rs
                        .peer_spans(&rule.peers, *family == Family::V6)
                        .into_iter()
                        .map(|(a, b)| interval_text(a, b, *family))
                        .collect();
                    plan.sets.insert(
                        name.clone(),
                        Arc::new(SetDef {
                            type_spec: family.addr_type().into(),
                            is_map: false,
                            interval: true,
                            elements,
                        }),
                    );
                    body.push(format!(
                        "{} {} @{name} {ports}{verdict}",
                        family.keyword(),
                        peer_field(direction)
                    ));
                }
            }
        }
    }
}

fn peer_field(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_chain_names() {
        assert!(is_identifier("palisade"));
        assert!(!is_identifier("1abc") || !is_identifier("a-b"));
        let a = endpoint_chain("default/web-1", Direction::Ingress);
        assert!(a.starts_with("ingress_default_web_1_"), "{a}");
        assert_ne!(a, endpoint_chain("default/web.1", Direction::Ingress));
        assert!(is_identifier(&endpoint_chain(
            &format!("ns/{}", "x".repeat(250)),
            Direction::Egress
        )));
        assert!(is_identifier(&endpoint_chain("//", Direction::Egress)));
    }

    #[test]
    fn intervals_render_as_prefixes_when_they_are() {
        assert_eq!(
            interval_text(0x0a000000, 0x0a0000ff, Family::V4),
            "10.0.0.0/24"
        );
        assert_eq!(
            interval_text(0x0a000001, 0x0a000002, Family::V4),
            "10.0.0.1-10.0.0.2"
        );
        assert_eq!(
            interval_text(0x0a000001, 0x0a000001, Family::V4),
            "10.0.0.1"
        );
        assert_eq!(interval_text(0, u32::MAX.into(), Family::V4), "0.0.0.0/0");
    }
}

#[cfg(test)]
mod layout_tests {
    use palisade_ir::Protocol;
    use palisade_ir::cidr::addr_to_u128;
    use palisade_ir::eval::{DirectionVerdict, Transport};
    use proptest::prelude::*;

    use super::*;

    fn parse_addr(s: &str) -> u128 {
        addr_to_u128(s.parse::<IpAddr>().unwrap())
    }

    /// `a`, `a/n` or `a-b` -> inclusive span (IPv4).
    fn parse_interval(s: &str) -> (u128, u128) {
        if let Some((a, b)) = s.split_once('-') {
            return (parse_addr(a), parse_addr(b));
        }
        if let Some((a, n)) = s.split_once('/') {
            let host = (1u128 << (32 - n.parse::<u32>().unwrap())) - 1;
            return (parse_addr(a), parse_addr(a) | host);
        }
        (parse_addr(s), parse_addr(s))
    }

    /// The verdict of the map element matching `key`; at most one may match.
    fn lookup(set: &SetDef, matches: impl Fn(&[&str]) -> bool) -> Option<String> {
        let hits: Vec<String> = set
            .elements
            .iter()
            .filter_map(|e| {
                let (key, verdict) = e.split_once(" : ")?;
                let parts: Vec<&str> = key.split(" . ").collect();
                matches(&parts).then(|| verdict.to_string())
            })
            .collect();
        assert!(hits.len() <= 1, "overlapping elements: {hits:?}");
        hits.into_iter().next()
    }

    fn in_ports(text: &str, port: u16) -> bool {
        let (a, b) = text.split_once('-').unwrap_or((text, text));
        a.parse::<u16>().unwrap() <= port && port <= b.parse::<u16>().unwrap()
    }

    /// Runs a packet through the plan's chains as nft would, from the endpoint chain;
    /// returns the counter owner of the rule that decided (or None if it fell through).
    fn run(plan: &Plan, chain: &str, peer: u128, transport: Transport) -> Option<CounterOwner> {
        let mut stack = vec![(chain.to_string(), 0usize)];
        while let Some((name, pc)) = stack.pop() {
            let def = &plan.chains[&name];
            let Some(rule) = def.rules.get(pc) else {
                continue;
            };
            let next = (name.clone(), pc + 1);
            let w: Vec<&str> = rule.split_whitespace().collect();
            let verdict = match w.as_slice() {
                ["ip", _, "vmap", map] => lookup(&plan.sets[&map[1..]], |k| {
                    let (a, b) = parse_interval(k[0]);
                    a <= peer && peer <= b
                }),
                ["meta", "l4proto", ".", "th", "dport", "vmap", map] => match transport {
                    Transport::Port(p, port) => lookup(&plan.sets[&map[1..]], |k| {
                        k[0] == p.as_str() && in_ports(k[1], port)
                    }),
                    Transport::Other => None,
                },
                ["goto", target] => Some(format!("goto {target}")),
                ["counter", "accept" | "drop", ..] => return def.counter.clone(),
                other => panic!("the emulator does not know {other:?}"),
            };
            match verdict.as_deref().and_then(|v| v.split_once(' ')) {
                None => stack.push(next),
                Some(("jump", target)) => {
                    stack.push(next);
                    stack.push((target.to_string(), 0));
                }
                Some(("goto", target)) => stack.push((target.to_string(), 0)),
                Some(other) => panic!("unknown verdict {other:?}"),
            }
        }
        None
    }

    proptest! {
        /// The rendered layout (peer maps, group chains, port maps, rule chains) decides
        /// every packet as `palisade_ir::eval` does, and counts it on the same rule.
        #[test]
        fn the_layout_agrees_with_the_executable_meaning((mut rs, rules) in palisade_testkit::ir_strategy::allow_rules(), peer in 0u8..20, proto in 0usize..4, port in 70u16..100) {
            let direction = DirectionRules { isolated: true, isolated_by: vec!["ns/p".into()], rules, ..Default::default() };
            rs.endpoints.insert("ns/a".into(), Endpoint { name: "ns/a".into(), ips: vec![IpAddr::from([10, 1, 0, 1])], ingress: direction.clone(), egress: Default::default() });
            let plan = Planner { rs: &rs, reuse: None, changed_sets: &BTreeSet::new(), events: None }.plan();
            let transport = if proto == 3 { Transport::Other } else { Transport::Port(Protocol::ALL[proto], port) };
            let ip = IpAddr::from([10, 0, 0, peer]);
            let expected = match rs.judge(&direction, ip, transport) {
                DirectionVerdict::Allowed(origin) => CounterOwner::Rule(origin),
                _ => CounterOwner::DefaultDeny("ns/a".into(), Direction::Ingress),
            };
            let chain = endpoint_chain("ns/a", Direction::Ingress);
            prop_assert_eq!(run(&plan, &chain, addr_to_u128(ip), transport), Some(expected));
        }
    }
}
