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

use palisade_ir::cidr::{addr_to_u128, u128_to_addr};
use palisade_ir::{
    Action, AllowRule, Direction, DirectionRules, Endpoint, NodeRuleset, PeerMatch, PortMatch,
    Protocol, RuleOrigin, SetId, TierRule,
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
    fn max(self) -> u128 {
        match self {
            Family::V4 => u32::MAX.into(),
            Family::V6 => u128::MAX,
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

/// The peers of a rule in one family, as sorted disjoint spans.
fn peer_spans(rs: &NodeRuleset, peers: &PeerMatch, family: Family) -> Vec<(u128, u128)> {
    match peers {
        PeerMatch::Any => vec![(0, family.max())],
        PeerMatch::Set(id) => rs
            .peer_sets
            .get(id)
            .map(|s| {
                s.ranges(family == Family::V6)
                    .iter()
                    .map(|r| (addr_to_u128(r.first), addr_to_u128(r.last)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The ports of a rule for one protocol, as spans (every port for [`PortMatch::Any`]).
fn port_spans(rs: &NodeRuleset, ports: &PortMatch, protocol: Protocol) -> Vec<(u16, u16)> {
    match ports {
        PortMatch::Any => vec![(0, u16::MAX)],
        PortMatch::Set(id) => rs
            .port_sets
            .get(id)
            .map(|s| {
                s.ranges
                    .iter()
                    .filter(|r| r.protocol == protocol)
                    .map(|r| (r.first, r.last))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// What the rules active on a piece of address space do with ports: per protocol, port
/// pieces and the index of the first rule taking them; and the first rule taking every
/// port (for protocols without ports).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Assignment {
    ports: Vec<(Protocol, u16, u16, usize)>,
    any: Option<usize>,
}

fn assign(rs: &NodeRuleset, rules: &[AllowRule], active: &[usize]) -> Assignment {
    let mut ports = Vec::new();
    for protocol in Protocol::ALL {
        let spans: Vec<(usize, Vec<(u16, u16)>)> = active
            .iter()
            .map(|&i| (i, port_spans(rs, &rules[i].ports, protocol)))
            .collect();
        let mut cuts: BTreeSet<u32> = BTreeSet::new();
        for (_, s) in &spans {
            for &(a, b) in s {
                cuts.insert(a.into());
                cuts.insert(u32::from(b) + 1);
            }
        }
        let cuts: Vec<u32> = cuts.into_iter().collect();
        for w in cuts.windows(2) {
            let (a, b) = (w[0] as u16, (w[1] - 1) as u16);
            let owner = spans
                .iter()
                .find(|(_, s)| s.iter().any(|&(x, y)| x <= a && b <= y))
                .map(|(i, _)| *i);
            if let Some(owner) = owner {
                match ports.last_mut() {
                    Some((p, _, last, o))
                        if *p == protocol
                            && *o == owner
                            && u32::from(*last) + 1 == u32::from(a) =>
                    {
                        *last = b
                    }
                    _ => ports.push((protocol, a, b, owner)),
                }
            }
        }
    }
    let any = active
        .iter()
        .copied()
        .find(|&i| rules[i].ports == PortMatch::Any);
    Assignment { ports, any }
}

/// The elements of a class's two maps in one family: `peer . proto . port : goto chain`
/// and `peer : goto chain` (rules taking every port, for protocols without ports).
fn class_elements(
    rs: &NodeRuleset,
    rules: &[AllowRule],
    family: Family,
) -> (BTreeSet<String>, BTreeSet<String>) {
    // Sweep the address line: at each cut the set of active rules changes.
    let mut events: BTreeMap<u128, Vec<(usize, bool)>> = BTreeMap::new();
    for (i, rule) in rules.iter().enumerate() {
        for (a, b) in peer_spans(rs, &rule.peers, family) {
            events.entry(a).or_default().push((i, true));
            if b < family.max() {
                events.entry(b + 1).or_default().push((i, false));
            }
        }
    }
    let mut active: BTreeMap<usize, usize> = BTreeMap::new();
    let mut memo: HashMap<Vec<usize>, Arc<Assignment>> = HashMap::new();
    // Pieces of the address line: (first, last, assignment).
    let mut pieces: Vec<(u128, u128, Arc<Assignment>)> = Vec::new();
    let points: Vec<u128> = events.keys().copied().collect();
    for (n, point) in points.iter().enumerate() {
        for &(i, start) in &events[point] {
            let count = active.entry(i).or_insert(0);
            if start {
                *count += 1;
            } else {
                *count -= 1;
                if *count == 0 {
                    active.remove(&i);
                }
            }
        }
        if active.is_empty() {
            continue;
        }
        let last = points.get(n + 1).map_or(family.max(), |next| next - 1);
        let key: Vec<usize> = active.keys().copied().collect();
        let assignment = memo
            .entry(key)
            .or_insert_with_key(|key| Arc::new(assign(rs, rules, key)))
            .clone();
        // Pieces are not merged with equal neighbours: a pod's address stays its own
        // element, so a pod joining is an addition, never a change of an existing one.
        pieces.push((*point, last, assignment));
    }
    let chain = |i: usize| rule_chain(&rules[i].origin, Action::Allow);
    let mut concat = BTreeSet::new();
    let mut any = BTreeSet::new();
    for (first, last, a) in pieces {
        let peer = interval_text(first, last, family);
        for &(protocol, pf, pl, owner) in &a.ports {
            concat.insert(format!(
                "{peer} . {} . {} : goto {}",
                protocol.as_str(),
                port_text(pf, pl),
                chain(owner)
            ));
        }
        if let Some(owner) = a.any {
            any.insert(format!("{peer} : goto {}", chain(owner)));
        }
    }
    (concat, any)
}

/// The id of a class: the direction and its NetworkPolicy rules (set ids, not members).
fn class_id(direction: Direction, rules: &[AllowRule]) -> String {
    let mut key = format!("{}\n", direction.as_str());
    for r in rules {
        key.push_str(&format!("{:?} {:?} {}\n", r.peers, r.ports, r.origin));
    }
    short_hash(&key, 12)
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
            let class = class_id(direction, &rules.rules);
            for family in &families {
                let (concat, any) = self.class_maps(plan, &class, direction, rules, *family);
                let (field, fam) = (peer_field(direction), family.keyword());
                body.push(format!(
                    "{fam} {field} . meta l4proto . th dport vmap @{concat}"
                ));
                if let Some(any) = any {
                    body.push(format!("{fam} {field} vmap @{any}"));
                }
            }
            let deny = if rules.isolated_by.is_empty() {
                "default deny".to_string()
            } else {
                format!("default deny: {}", rules.isolated_by.join(", "))
            };
            body.push(format!("counter drop comment {}", comment(&deny)));
            counter = Some(CounterOwner::DefaultDeny(ep.name.clone(), direction));
        } else {
            for r in &rules.baseline {
                self.tier_rule(plan, &families, direction, r, &rest, &mut body);
            }
            // Nothing decided: an egress check returns (the ingress check still runs),
            // an ingress check falls off the chain and the base chain accepts.
            body.push("return".to_string());
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

    /// The class maps of one family (reused when none of their sets changed); returns the
    /// names of the port map and, if any rule takes every port, of the address-only map.
    fn class_maps(
        &self,
        plan: &mut Plan,
        class: &str,
        direction: Direction,
        rules: &DirectionRules,
        family: Family,
    ) -> (String, Option<String>) {
        let concat_name = format!("np_{class}{}", family.suffix());
        let any_name = format!("npany_{class}{}", family.suffix());
        let has_any = rules.rules.iter().any(|r| r.ports == PortMatch::Any);
        for r in &rules.rules {
            self.rule_chain(plan, &r.origin, Action::Allow, direction);
        }
        if plan.sets.contains_key(&concat_name) {
            return (concat_name, has_any.then_some(any_name));
        }
        let unchanged = rules.rules.iter().all(|r| match &r.peers {
            PeerMatch::Set(id) => !self.changed_sets.contains(id),
            PeerMatch::Any => true,
        });
        let reused = self.reuse.filter(|_| unchanged).and_then(|old| {
            let concat = old.sets.get(&concat_name)?.clone();
            let any = if has_any {
                Some(old.sets.get(&any_name)?.clone())
            } else {
                None
            };
            Some((concat, any))
        });
        let (concat, any) = reused.unwrap_or_else(|| {
            let (concat, any) = class_elements(self.rs, &rules.rules, family);
            let addr = family.addr_type();
            (
                Arc::new(SetDef {
                    type_spec: format!("{addr} . inet_proto . inet_service : verdict"),
                    is_map: true,
                    interval: true,
                    elements: concat,
                }),
                has_any.then(|| {
                    Arc::new(SetDef {
                        type_spec: format!("{addr} : verdict"),
                        is_map: true,
                        interval: true,
                        elements: any,
                    })
                }),
            )
        });
        plan.sets.insert(concat_name.clone(), concat);
        if let Some(any) = any {
            plan.sets.insert(any_name.clone(), any);
        }
        (concat_name, has_any.then_some(any_name))
    }

    fn rule_chain(
        &self,
        plan: &mut Plan,
        origin: &RuleOrigin,
        action: Action,
        direction: Direction,
    ) -> String {
        let name = rule_chain(origin, action);
        if !plan.chains.contains_key(&name) {
            let verdict = match (action, direction) {
                (Action::Deny, _) => "drop",
                (_, Direction::Ingress) => "accept",
                // Egress allowed: back to the base chain, where the ingress check runs.
                (_, Direction::Egress) => "return",
            };
            plan.chains.insert(
                name.clone(),
                Arc::new(ChainDef {
                    comment: comment(&origin.to_string()),
                    rules: vec![format!(
                        "counter {verdict} comment {}",
                        comment(&origin.to_string())
                    )],
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
            action => format!(
                "goto {}",
                self.rule_chain(plan, &rule.origin, action, direction)
            ),
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
                    let elements = peer_spans(self.rs, &rule.peers, *family)
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
mod class_tests {
    use palisade_ir::eval::{DirectionVerdict, Transport};
    use palisade_ir::{PeerSet, PortRange, PortSet};
    use proptest::prelude::*;

    use super::*;

    fn parse_addr(s: &str) -> u128 {
        addr_to_u128(s.parse::<IpAddr>().unwrap())
    }

    /// `a`, `a/n` or `a-b` -> inclusive span.
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

    /// What the kernel does with the rendered class maps: the element matching the packet.
    fn lookup(
        concat: &BTreeSet<String>,
        any: &BTreeSet<String>,
        peer: u128,
        transport: Transport,
    ) -> Option<String> {
        let hits: Vec<String> = match transport {
            Transport::Port(p, port) => concat
                .iter()
                .filter_map(|e| {
                    let (key, chain) = e.split_once(" : goto ")?;
                    let parts: Vec<&str> = key.split(" . ").collect();
                    let (a, b) = parse_interval(parts[0]);
                    let (pf, pl) = parts[2].split_once('-').map_or((parts[2], parts[2]), |x| x);
                    let ok = a <= peer
                        && peer <= b
                        && parts[1] == p.as_str()
                        && pf.parse::<u16>().unwrap() <= port
                        && port <= pl.parse::<u16>().unwrap();
                    ok.then(|| chain.to_string())
                })
                .collect(),
            Transport::Other => Vec::new(),
        };
        assert!(hits.len() <= 1, "overlapping elements: {hits:?}");
        if hits.is_empty() {
            let any_hits: Vec<String> = any
                .iter()
                .filter_map(|e| {
                    let (key, chain) = e.split_once(" : goto ")?;
                    let (a, b) = parse_interval(key);
                    (a <= peer && peer <= b).then(|| chain.to_string())
                })
                .collect();
            assert!(any_hits.len() <= 1, "overlapping elements: {any_hits:?}");
            return any_hits.into_iter().next();
        }
        hits.into_iter().next()
    }

    fn rules_strategy() -> impl Strategy<Value = (NodeRuleset, Vec<AllowRule>)> {
        let peer = prop_oneof![
            Just(None),
            (
                proptest::collection::btree_set(0u8..16, 0..5),
                proptest::collection::vec((0u8..16, 28u8..=32), 0..3)
            )
                .prop_map(Some),
        ];
        let port = prop_oneof![Just(None), (0u8..3, 75u16..90, 0u16..6).prop_map(Some)];
        proptest::collection::vec((peer, port), 1..6).prop_map(|specs| {
            let mut rs = NodeRuleset::default();
            let mut rules = Vec::new();
            for (i, (peer, port)) in specs.into_iter().enumerate() {
                let peers = match peer {
                    None => PeerMatch::Any,
                    Some((addrs, nets)) => {
                        let mut blocks: Vec<ipnet::IpNet> = nets
                            .into_iter()
                            .map(|(a, len)| {
                                ipnet::IpNet::new(IpAddr::from([10, 0, 0, a]), len)
                                    .unwrap()
                                    .trunc()
                            })
                            .collect();
                        blocks.sort_by_key(|n| (n.network(), n.prefix_len()));
                        blocks.dedup_by(|b, a| a.contains(&b.network()));
                        let id = SetId(format!("peer_{i}"));
                        rs.peer_sets.insert(
                            id.clone(),
                            PeerSet {
                                addresses: addrs
                                    .into_iter()
                                    .map(|a| IpAddr::from([10, 0, 0, a]))
                                    .collect(),
                                blocks,
                            },
                        );
                        PeerMatch::Set(id)
                    }
                };
                let ports = match port {
                    None => PortMatch::Any,
                    Some((p, first, len)) => {
                        let set = PortSet {
                            ranges: vec![PortRange {
                                protocol: Protocol::ALL[p as usize],
                                first,
                                last: first + len,
                            }],
                        };
                        let id = set.id();
                        rs.port_sets.insert(id.clone(), set);
                        PortMatch::Set(id)
                    }
                };
                rules.push(AllowRule {
                    peers,
                    ports,
                    origin: RuleOrigin {
                        policy_namespace: "ns".into(),
                        policy_name: format!("p{i}"),
                        direction: Direction::Ingress,
                        rule_index: i,
                    },
                });
            }
            (rs, rules)
        })
    }

    proptest! {
        /// The class maps are disjoint and send every packet to the rule chain of the rule
        /// `palisade_ir::eval` counts it on (or nowhere, where eval denies).
        #[test]
        fn class_maps_agree_with_the_executable_meaning((rs, rules) in rules_strategy(), peer in 0u8..20, proto in 0usize..4, port in 70u16..100) {
            let (concat, any) = class_elements(&rs, &rules, Family::V4);
            let transport = if proto == 3 { Transport::Other } else { Transport::Port(Protocol::ALL[proto], port) };
            let direction = DirectionRules { isolated: true, isolated_by: vec!["ns/p".into()], rules: rules.clone(), ..Default::default() };
            let ip = IpAddr::from([10, 0, 0, peer]);
            let expected = match rs.judge(&direction, ip, transport) {
                DirectionVerdict::Allowed(origin) => Some(rule_chain(&origin, Action::Allow)),
                _ => None,
            };
            prop_assert_eq!(lookup(&concat, &any, addr_to_u128(ip), transport), expected);
        }
    }
}
