//! The kernel objects a ruleset stands for, pure: per family, Palisade's chains of the
//! `filter` table (rules as `iptables-restore` text after `-A CHAIN`), and the ipsets.
//!
//! Layout (per family; `4`/`6` in set names):
//! - `PAL-FORWARD`, jumped to from the first rule of `FORWARD` for packets that are not
//!   of an established or related connection (those never leave `FORWARD`, and are also
//!   returned by `PAL-FORWARD`'s first rule, should an older hook send them): invalid
//!   drop, then `-m set --match-set PAL-GE-4 src -j PAL-EGRESS` (the endpoint addresses
//!   whose egress is filtered) and `-m set --match-set PAL-GI-4 dst -j PAL-INGRESS`.
//! - `PAL-EGRESS` / `PAL-INGRESS`: the root of a dispatch tree over endpoint addresses. A
//!   node holds at most [`LEAF`] rules; a node with more addresses splits them by the next
//!   4 bits after their common prefix (`-s 10.1.16.0/20 -g PAL-ET-<hash>`), so a packet
//!   meets O(16 log16 n) plain address compares and a pod joining rewrites one path.
//! - `PAL-E-<hash>` / `PAL-I-<hash>`: one chain per endpoint and filtered direction: the
//!   admin tier, then the NetworkPolicy tier as one rule per policy rule (and per protocol
//!   chunk of its ports; one port or range as `-p tcp -m tcp --dport 80`): `-p tcp -m
//!   multiport --dports 80,8000:8080 -m set --match-set
//!   PAL-<set>-4 src -m comment --comment "<origin>" -j RETURN`, in the order
//!   [`palisade_ir::eval`] attributes packets (rules naming peers first), then the default
//!   deny `-m comment --comment "default deny: ..." -j DROP`. Every rule carries its own
//!   packet counter: the counter of a policy rule is the sum of its rules' counters.
//! - Allowed packets `RETURN` (egress back to `PAL-FORWARD`, where the ingress check still
//!   runs; ingress back to `FORWARD`): Palisade never accepts, it only drops what policy
//!   denies, and other programs' rules after the hook still see the packet.
//! - ipsets `PAL-<hash>-4` / `-6` (`hash:net`, one pair per IR peer set, named by its
//!   [`SetId`]): pod addresses as their own elements, ipBlocks as the IR's prefixes (excepts
//!   already subtracted; `/0` as two `/1`s since `hash:net` refuses `/0`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use palisade_ir::events::{EventConfig, EventTag};
use palisade_ir::{
    Action, Direction, DirectionRules, Endpoint, NodeRuleset, PeerMatch, PortMatch, Protocol,
    RuleOrigin, SetId,
};
use sha2::{Digest, Sha256};

/// Most rules of one node of the dispatch tree.
pub(crate) const LEAF: usize = 16;
/// xt_comment keeps at most 255 bytes.
const COMMENT_MAX: usize = 240;
/// multiport takes at most 15 ports, a range counting two.
const MULTIPORT_SLOTS: usize = 15;

/// The chain `FORWARD` jumps to.
pub(crate) const FORWARD_CHAIN: &str = "PAL-FORWARD";
/// Every chain and set this backend owns starts with this.
pub(crate) const PREFIX: &str = "PAL-";
/// The comment of the hook rule in `FORWARD`.
pub(crate) const HOOK_COMMENT: &str = "palisade: NetworkPolicy";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    pub(crate) fn digit(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
        }
    }
    /// ipset's `family` keyword.
    pub(crate) fn ipset(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }
    pub(crate) fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
    pub(crate) fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
    /// `iptables` or `ip6tables`.
    pub fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// What a rule's counter stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CounterOwner {
    /// New connections a policy rule allowed (admin/baseline deny rules: dropped).
    Rule(RuleOrigin),
    /// Default-deny drops of an endpoint's direction.
    DefaultDeny(String, Direction),
    /// New connections of an endpoint's direction that audited policies would deny.
    AuditDenied(String, Direction),
}

/// One rule: what follows `-A CHAIN ` in `iptables-restore` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub spec: String,
    pub counter: Option<CounterOwner>,
}

impl Rule {
    fn plain(spec: String) -> Rule {
        Rule {
            spec,
            counter: None,
        }
    }
}

/// Palisade's chains of one family's `filter` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Table {
    /// Shared with the previous plan when unchanged (compared by pointer first).
    pub chains: BTreeMap<String, Arc<Vec<Rule>>>,
}

/// An ipset Palisade owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetDef {
    /// `hash:net` (peers) or `hash:ip` (the dispatch gates).
    pub kind: &'static str,
    pub family: Family,
    pub elements: BTreeSet<String>,
}

impl SetDef {
    /// Gates are filled after the chains they lead to exist, and emptied before.
    pub fn is_gate(name: &str) -> bool {
        name.starts_with("PAL-G")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Indexed by [`Family::index`].
    pub tables: [Table; 2],
    pub sets: BTreeMap<String, Arc<SetDef>>,
    /// The chains of each endpoint: (family index, chain name).
    pub endpoint_chains: BTreeMap<String, Vec<(usize, String)>>,
}

/// What an update may take from the plan it replaces: the sets whose members did not
/// change and the chains of endpoints that did not change are the same objects.
#[derive(Debug)]
pub(crate) struct Reuse<'a> {
    pub old: &'a Plan,
    pub changed_sets: &'a BTreeSet<SetId>,
    pub changed_endpoints: &'a BTreeSet<String>,
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

/// `PAL-I-<hash>` / `PAL-E-<hash>`: at most 28 bytes, as iptables requires.
pub(crate) fn endpoint_chain(endpoint: &str, direction: Direction) -> String {
    let d = match direction {
        Direction::Ingress => "I",
        Direction::Egress => "E",
    };
    format!("PAL-{d}-{}", short_hash(endpoint, 16))
}

/// The ipset of an IR peer set in one family.
pub(crate) fn peer_set_name(id: &SetId, family: Family) -> String {
    format!("PAL-{}-{}", short_hash(&id.0, 16), family.digit())
}

pub(crate) fn gate_set_name(direction: Direction, family: Family) -> String {
    let d = match direction {
        Direction::Ingress => "I",
        Direction::Egress => "E",
    };
    format!("PAL-G{d}-{}", family.digit())
}

fn dispatch_root(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "PAL-INGRESS",
        Direction::Egress => "PAL-EGRESS",
    }
}

/// A quoted comment: printable ASCII without quotes or backslashes, bounded.
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

/// An element of a `hash:net` set: a host as its bare address (as `ipset save` prints it),
/// a prefix as `a/n`; `/0` (refused by `hash:net`) as its two halves.
pub(crate) fn net_elements(net: &IpNet) -> Vec<String> {
    let net = net.trunc();
    if net.prefix_len() == net.max_prefix_len() {
        return vec![net.addr().to_string()];
    }
    if net.prefix_len() == 0 {
        return net
            .subnets(1)
            .map(|s| s.map(|n| n.to_string()).collect())
            .unwrap_or_default();
    }
    vec![net.to_string()]
}

fn peer_flag(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "src",
        Direction::Egress => "dst",
    }
}

fn addr_flag(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "-d",
        Direction::Egress => "-s",
    }
}

/// The port parts of a rule's matches: one per protocol chunk, `""` for any port.
fn port_matches(rs: &NodeRuleset, ports: &PortMatch) -> Vec<String> {
    let PortMatch::Set(id) = ports else {
        return vec![String::new()];
    };
    let Some(set) = rs.port_sets.get(id) else {
        // validate() rejects this; a rule naming a missing set matches nothing.
        return Vec::new();
    };
    let mut out = Vec::new();
    for protocol in Protocol::ALL {
        let ranges: Vec<(u16, u16)> = set
            .ranges
            .iter()
            .filter(|r| r.protocol == protocol)
            .map(|r| (r.first, r.last))
            .collect();
        if ranges.is_empty() {
            continue;
        }
        if ranges == [(0, u16::MAX)] {
            out.push(format!("-p {} ", protocol.as_str()));
            continue;
        }
        let mut chunk: Vec<String> = Vec::new();
        let mut slots = 0;
        for (a, b) in ranges {
            let (item, cost) = if a == b {
                (a.to_string(), 1)
            } else {
                (format!("{a}:{b}"), 2)
            };
            if slots + cost > MULTIPORT_SLOTS {
                out.push(multiport(protocol, &chunk));
                chunk.clear();
                slots = 0;
            }
            chunk.push(item);
            slots += cost;
        }
        if !chunk.is_empty() {
            out.push(multiport(protocol, &chunk));
        }
    }
    out
}

/// One port or range: the protocol's own match (`-p tcp --dport 80`), which iptables-nft
/// translates to native expressions; more: `-m multiport`.
fn multiport(protocol: Protocol, items: &[String]) -> String {
    let p = protocol.as_str();
    match items {
        [one] => format!("-p {p} -m {p} --dport {one} "),
        _ => format!("-p {p} -m multiport --dports {} ", items.join(",")),
    }
}

/// Builds the plan of a ruleset.
pub(crate) fn plan(rs: &NodeRuleset, events: Option<&EventConfig>) -> Plan {
    plan_with(rs, None, events)
}

/// `-m limit ... -j NFLOG`: reports `tag` to the NFLOG group, at most at the configured rate
/// (the rule's own limit state: per endpoint and direction in an endpoint chain, per rule
/// for allows). NFLOG does not end the chain.
fn log_rule(matches: &str, events: &EventConfig, tag: EventTag) -> Rule {
    Rule::plain(format!(
        "{matches}-m limit --limit {}/second --limit-burst {} -j NFLOG --nflog-group {} --nflog-prefix {tag}",
        events.rate_per_second.max(1),
        events.burst.max(1),
        events.nflog_group
    ))
}

/// Builds the plan of a ruleset, taking unchanged sets and endpoint chains from `reuse`.
pub(crate) fn plan_with(
    rs: &NodeRuleset,
    reuse: Option<&Reuse>,
    events: Option<&EventConfig>,
) -> Plan {
    let mut plan = Plan::default();
    // Peer sets, both families, whatever their members: a pod joining is one `add`.
    for (id, set) in &rs.peer_sets {
        if let Some(r) = reuse.filter(|r| !r.changed_sets.contains(id)) {
            let names = Family::BOTH.map(|f| peer_set_name(id, f));
            if let [Some(a), Some(b)] = names.each_ref().map(|n| r.old.sets.get(n)) {
                let (a, b) = (a.clone(), b.clone());
                let [na, nb] = names;
                plan.sets.insert(na, a);
                plan.sets.insert(nb, b);
                continue;
            }
        }
        for family in Family::BOTH {
            let mut elements = BTreeSet::new();
            for a in set.addresses.iter().filter(|a| Family::of(a) == family) {
                elements.insert(a.to_string());
            }
            for b in set
                .blocks
                .iter()
                .filter(|b| Family::of(&b.addr()) == family)
            {
                elements.extend(net_elements(b));
            }
            plan.sets.insert(
                peer_set_name(id, family),
                Arc::new(SetDef {
                    kind: "hash:net",
                    family,
                    elements,
                }),
            );
        }
    }
    for family in Family::BOTH {
        let mut dispatch: BTreeMap<Direction, Vec<(u128, String)>> = BTreeMap::new();
        let table = &mut plan.tables[family.index()];
        for ep in rs.endpoints.values() {
            let ips: Vec<&IpAddr> = ep
                .ips
                .iter()
                .filter(|ip| Family::of(ip) == family)
                .collect();
            if ips.is_empty() {
                continue;
            }
            for direction in Direction::BOTH {
                let rules = ep.direction(direction);
                if !rules.is_filtered() {
                    continue;
                }
                let chain = endpoint_chain(&ep.name, direction);
                for ip in &ips {
                    dispatch
                        .entry(direction)
                        .or_default()
                        .push((palisade_ir::cidr::addr_to_u128(**ip), chain.clone()));
                }
                let reused = reuse
                    .filter(|r| !r.changed_endpoints.contains(&ep.name))
                    .and_then(|r| Some((r.old, r.old.endpoint_chains.get(&ep.name)?)));
                let owned = plan.endpoint_chains.entry(ep.name.clone()).or_default();
                match reused {
                    Some((old, chains)) => {
                        for (i, name) in chains {
                            if *i != family.index() || !name.starts_with(&chain) {
                                continue;
                            }
                            if let Some(rules) = old.tables[*i].chains.get(name) {
                                table.chains.insert(name.clone(), rules.clone());
                                owned.push((*i, name.clone()));
                            }
                        }
                    }
                    None => {
                        for name in
                            endpoint_chains(rs, table, family, ep, direction, rules, &chain, events)
                        {
                            owned.push((family.index(), name));
                        }
                    }
                }
            }
        }
        let mut forward = vec![
            Rule::plain("-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".into()),
            Rule::plain("-m conntrack --ctstate INVALID -j DROP".into()),
        ];
        for direction in [Direction::Egress, Direction::Ingress] {
            let gate = gate_set_name(direction, family);
            let mut entries = dispatch.remove(&direction).unwrap_or_default();
            entries.sort();
            let elements = entries
                .iter()
                .map(|(a, _)| palisade_ir::cidr::u128_to_addr(*a, family == Family::V6).to_string())
                .collect();
            plan.sets.insert(
                gate.clone(),
                Arc::new(SetDef {
                    kind: "hash:ip",
                    family,
                    elements,
                }),
            );
            let root = dispatch_root(direction);
            forward.push(Rule::plain(format!(
                "-m set --match-set {gate} {} -j {root}",
                peer_flag(match direction {
                    // The endpoint is the source of its egress, the destination of its ingress.
                    Direction::Egress => Direction::Ingress,
                    Direction::Ingress => Direction::Egress,
                })
            )));
            tree(table, root, direction, family, &entries, 0);
        }
        table
            .chains
            .insert(FORWARD_CHAIN.to_string(), Arc::new(forward));
    }
    plan
}

/// Builds the dispatch tree node `chain` over `entries` (sorted addresses, their chains),
/// whose addresses share at least `len` leading bits.
fn tree(
    table: &mut Table,
    chain: &str,
    direction: Direction,
    family: Family,
    entries: &[(u128, String)],
    len: u32,
) {
    let bits = family.bits();
    let flag = addr_flag(direction);
    let host = |a: u128| {
        format!(
            "{}/{bits}",
            palisade_ir::cidr::u128_to_addr(a, family == Family::V6)
        )
    };
    let mut rules = Vec::new();
    let shift = 128 - bits;
    let common = match (entries.first(), entries.last()) {
        (Some(f), Some(l)) => ((f.0 ^ l.0) << shift).leading_zeros().min(bits).max(len),
        _ => bits,
    };
    if entries.len() <= LEAF || common >= bits {
        for (a, target) in entries {
            rules.push(Rule::plain(format!("{flag} {} -g {target}", host(*a))));
        }
        table.chains.insert(chain.to_string(), Arc::new(rules));
        return;
    }
    // Split by the 4 bits after the common prefix of the first and last (sorted) address.
    let child_len = (common + 4).min(bits);
    let mut i = 0;
    while i < entries.len() {
        let key = prefix_of(entries[i].0, child_len, bits);
        let mut j = i;
        while j < entries.len() && prefix_of(entries[j].0, child_len, bits) == key {
            j += 1;
        }
        let group = &entries[i..j];
        if group.len() == 1 {
            rules.push(Rule::plain(format!(
                "{flag} {} -g {}",
                host(group[0].0),
                group[0].1
            )));
        } else {
            let net = format!(
                "{}/{child_len}",
                palisade_ir::cidr::u128_to_addr(key, family == Family::V6)
            );
            let d = match direction {
                Direction::Ingress => "I",
                Direction::Egress => "E",
            };
            let child = format!("PAL-{d}T-{}", short_hash(&net, 16));
            rules.push(Rule::plain(format!("{flag} {net} -g {child}")));
            tree(table, &child, direction, family, group, child_len);
        }
        i = j;
    }
    table.chains.insert(chain.to_string(), Arc::new(rules));
}

/// The first `len` bits of `a` (a `bits`-bit address), the rest zero.
fn prefix_of(a: u128, len: u32, bits: u32) -> u128 {
    if len == 0 {
        return 0;
    }
    let host_bits = bits - len;
    if host_bits >= 128 {
        0
    } else {
        (a >> host_bits) << host_bits
    }
}

/// The chains of one endpoint's direction in one family; returns their names.
#[allow(clippy::too_many_arguments)]
fn endpoint_chains(
    rs: &NodeRuleset,
    table: &mut Table,
    family: Family,
    ep: &Endpoint,
    direction: Direction,
    rules: &DirectionRules,
    chain: &str,
    events: Option<&EventConfig>,
) -> Vec<String> {
    let np_chain = format!("{chain}-N");
    let mut body = Vec::new();
    let matches = |peers: &PeerMatch, ports: &PortMatch| -> Vec<String> {
        let peer = match peers {
            PeerMatch::Any => String::new(),
            PeerMatch::Set(id) => format!(
                "-m set --match-set {} {} ",
                peer_set_name(id, family),
                peer_flag(direction)
            ),
        };
        port_matches(rs, ports)
            .into_iter()
            .map(|p| format!("{p}{peer}"))
            .collect()
    };
    let tier_rule = |body: &mut Vec<Rule>,
                     peers: &PeerMatch,
                     ports: &PortMatch,
                     origin: &RuleOrigin,
                     action: Action| {
        for m in matches(peers, ports) {
            if let Some(events) = events.filter(|e| e.log_allowed && action == Action::Allow) {
                body.push(log_rule(&m, events, EventTag::allowed(origin)));
            }
            let (verdict, counter) = match action {
                Action::Allow => ("-j RETURN".to_string(), true),
                Action::Deny => ("-j DROP".to_string(), true),
                Action::Pass => (format!("-g {np_chain}"), false),
            };
            body.push(Rule {
                spec: format!(
                    "{m}-m comment --comment {} {verdict}",
                    comment(&origin.to_string())
                ),
                counter: counter.then(|| CounterOwner::Rule(origin.clone())),
            });
        }
    };
    for r in &rules.admin {
        tier_rule(&mut body, &r.peers, &r.ports, &r.origin, r.action);
    }
    let mut tail = chain.to_string();
    if !rules.admin.is_empty() {
        body.push(Rule::plain(format!("-g {np_chain}")));
        table
            .chains
            .insert(chain.to_string(), Arc::new(std::mem::take(&mut body)));
        tail = np_chain.clone();
    }
    if rules.isolated {
        // Rules naming peers first, then rules for any peer: the order eval counts in.
        let (named, any): (Vec<_>, Vec<_>) = rules
            .rules
            .iter()
            .partition(|r| matches!(r.peers, PeerMatch::Set(_)));
        for r in named.into_iter().chain(any) {
            tier_rule(&mut body, &r.peers, &r.ports, &r.origin, Action::Allow);
        }
        let deny = if rules.isolated_by.is_empty() {
            format!("default deny: {} {}", ep.name, direction.as_str())
        } else {
            format!(
                "default deny: {} {} ({})",
                ep.name,
                direction.as_str(),
                rules.isolated_by.join(", ")
            )
        };
        if let Some(events) = events {
            body.push(log_rule("", events, EventTag::denied(&ep.name, direction)));
        }
        body.push(Rule {
            spec: format!("-m comment --comment {} -j DROP", comment(&deny)),
            counter: Some(CounterOwner::DefaultDeny(ep.name.clone(), direction)),
        });
    } else {
        if let Some(audit) = &rules.audit {
            // What the audited policies allow returns here (skipping the baseline tier:
            // the dataplane refuses an audit tier beside one); the rest is counted (and
            // reported) as audit-denied, and goes on.
            let (named, any): (Vec<_>, Vec<_>) = audit
                .rules
                .iter()
                .partition(|r| matches!(r.peers, PeerMatch::Set(_)));
            for r in named.into_iter().chain(any) {
                tier_rule(&mut body, &r.peers, &r.ports, &r.origin, Action::Allow);
            }
            if let Some(events) = events {
                body.push(log_rule(
                    "",
                    events,
                    EventTag::audit_denied(&ep.name, direction),
                ));
            }
            let label = format!(
                "audit-denied: {} {} ({})",
                ep.name,
                direction.as_str(),
                audit.isolated_by.join(", ")
            );
            body.push(Rule {
                spec: format!("-m comment --comment {}", comment(&label)),
                counter: Some(CounterOwner::AuditDenied(ep.name.clone(), direction)),
            });
        }
        for r in &rules.baseline {
            let action = if r.action == Action::Pass {
                Action::Allow
            } else {
                r.action
            };
            tier_rule(&mut body, &r.peers, &r.ports, &r.origin, action);
        }
    }
    let mut names = vec![tail.clone()];
    if tail != chain {
        names.push(chain.to_string());
    }
    table.chains.insert(tail, Arc::new(body));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_iptables_and_ipset_limits() {
        let c = endpoint_chain(&format!("ns/{}", "x".repeat(300)), Direction::Ingress);
        assert!(c.len() + 2 <= 28, "{c}");
        let s = peer_set_name(&SetId("peer_abc".into()), Family::V6);
        assert!(s.len() <= 31, "{s}");
    }

    #[test]
    fn slash_zero_becomes_two_halves() {
        let net: IpNet = "0.0.0.0/0".parse().unwrap();
        assert_eq!(net_elements(&net), vec!["0.0.0.0/1", "128.0.0.0/1"]);
        let host: IpNet = "2001:db8::1/128".parse().unwrap();
        assert_eq!(net_elements(&host), vec!["2001:db8::1"]);
    }

    #[test]
    fn multiport_chunks_hold_at_most_fifteen_slots() {
        let mut rs = NodeRuleset::default();
        let set = palisade_ir::PortSet {
            ranges: (0..20)
                .map(|i| palisade_ir::PortRange {
                    protocol: Protocol::Tcp,
                    first: 100 + i * 10,
                    last: 100 + i * 10 + (i % 2),
                })
                .collect(),
        };
        let id = set.id();
        rs.port_sets.insert(id.clone(), set);
        let chunks = port_matches(&rs, &PortMatch::Set(id));
        assert!(chunks.len() >= 2);
        for c in &chunks {
            let list = c.split_whitespace().last().unwrap();
            let slots: usize = list
                .split(',')
                .map(|i| if i.contains(':') { 2 } else { 1 })
                .sum();
            assert!(slots <= MULTIPORT_SLOTS, "{c}");
        }
    }
}

#[cfg(test)]
mod dispatch_tests {
    use proptest::prelude::*;

    use super::*;

    /// Follows the dispatch tree from `root` as iptables would for a packet whose endpoint
    /// address (source for egress, destination for ingress) is `ip`: the first rule whose
    /// prefix holds the address `-g`oes to its target. Returns the endpoint chain reached,
    /// None when the packet falls off the tree. Counts the rules met.
    fn dispatch(table: &Table, root: &str, ip: IpAddr, met: &mut usize) -> Option<String> {
        let mut chain = root.to_string();
        loop {
            let rules = table.chains.get(&chain).expect("chain exists");
            let mut next = None;
            for rule in rules.iter() {
                *met += 1;
                let w: Vec<&str> = rule.spec.split_whitespace().collect();
                let [_flag, net, "-g", target] = w.as_slice() else {
                    panic!("unexpected dispatch rule {}", rule.spec);
                };
                let net: IpNet = net.parse().expect("prefix");
                if net.contains(&ip) {
                    next = Some(target.to_string());
                    break;
                }
            }
            match next {
                None => return None,
                Some(t) if t.starts_with("PAL-ET-") || t.starts_with("PAL-IT-") => chain = t,
                Some(t) => return Some(t),
            }
        }
    }

    fn endpoint(i: usize, ip: IpAddr) -> Endpoint {
        let isolated = DirectionRules {
            isolated: true,
            isolated_by: vec!["ns/p".into()],
            ..Default::default()
        };
        Endpoint {
            name: format!("ns/pod-{i}"),
            ips: vec![ip],
            ingress: isolated.clone(),
            egress: if i.is_multiple_of(3) {
                isolated
            } else {
                Default::default()
            },
        }
    }

    proptest! {
        /// Every endpoint address reaches its own chain, in a bounded number of rules;
        /// other addresses fall off the tree.
        #[test]
        fn every_endpoint_address_reaches_its_own_chain(
            v4 in proptest::collection::btree_set(any::<u32>().prop_map(|a| a & 0x0a0f_ffff | 0x0a00_0000), 0..400),
            v6 in proptest::collection::btree_set(any::<u16>(), 0..100),
            probes in proptest::collection::vec(any::<u32>(), 20),
        ) {
            let mut rs = NodeRuleset::default();
            let mut ips: Vec<IpAddr> = v4.iter().map(|a| IpAddr::from(a.to_be_bytes())).collect();
            ips.extend(v6.iter().map(|a| IpAddr::from(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, *a))));
            for (i, ip) in ips.iter().enumerate() {
                let ep = endpoint(i, *ip);
                rs.endpoints.insert(ep.name.clone(), ep);
            }
            let plan = plan(&rs, None);
            for (i, ip) in ips.iter().enumerate() {
                let table = &plan.tables[Family::of(ip).index()];
                for (direction, root) in [(Direction::Ingress, "PAL-INGRESS"), (Direction::Egress, "PAL-EGRESS")] {
                    let mut met = 0;
                    let got = dispatch(table, root, *ip, &mut met);
                    let filtered = direction == Direction::Ingress || i.is_multiple_of(3);
                    let want = filtered.then(|| endpoint_chain(&format!("ns/pod-{i}"), direction));
                    prop_assert_eq!(got, want, "{} {:?}", ip, direction);
                    // At most 16 rules per level, and a level per 4 bits.
                    prop_assert!(met <= LEAF * (1 + Family::of(ip).bits() as usize / 4), "{met} rules");
                }
                let gate = &plan.sets[&gate_set_name(Direction::Ingress, Family::of(ip))];
                prop_assert!(gate.elements.contains(&ip.to_string()));
            }
            for p in probes {
                let ip = IpAddr::from(p.to_be_bytes());
                if ips.contains(&ip) {
                    continue;
                }
                let mut met = 0;
                let table = &plan.tables[0];
                prop_assert_eq!(dispatch(table, "PAL-INGRESS", ip, &mut met), None);
            }
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use palisade_ir::eval::{DirectionVerdict, Transport};
    use proptest::prelude::*;

    use super::*;

    fn in_set(plan: &Plan, name: &str, ip: IpAddr) -> bool {
        plan.sets[name]
            .elements
            .iter()
            .any(|e| match e.parse::<IpNet>() {
                Ok(net) => net.contains(&ip),
                Err(_) => e.parse::<IpAddr>().is_ok_and(|a| a == ip),
            })
    }

    fn in_ports(list: &str, port: u16) -> bool {
        list.split(',').any(|item| {
            let (a, b) = item.split_once(':').unwrap_or((item, item));
            a.parse::<u16>().unwrap() <= port && port <= b.parse::<u16>().unwrap()
        })
    }

    /// Runs a packet through an endpoint chain as iptables would (matches in order, the
    /// first rule whose matches all hold decides); returns the counter owner of that rule,
    /// None when it falls off the chain.
    fn run(
        plan: &Plan,
        family: Family,
        chain: &str,
        peer: IpAddr,
        transport: Transport,
    ) -> Option<CounterOwner> {
        let rules = &plan.tables[family.index()].chains[chain];
        for rule in rules.iter() {
            let w: Vec<&str> = rule.spec.split_whitespace().collect();
            let mut i = 0;
            let mut holds = true;
            while i < w.len() && holds {
                match w[i] {
                    "-p" => {
                        holds =
                            matches!(transport, Transport::Port(p, _) if p.as_str() == w[i + 1]);
                        i += 2;
                    }
                    "-m" if matches!(w[i + 1], "tcp" | "udp" | "sctp" | "multiport") => {
                        let Transport::Port(_, port) = transport else {
                            unreachable!("-p comes first")
                        };
                        holds = in_ports(w[i + 3], port);
                        i += 4;
                    }
                    "-m" if w[i + 1] == "set" => {
                        holds = in_set(plan, w[i + 3], peer);
                        i += 5;
                    }
                    "-m" if w[i + 1] == "comment" => {
                        // Skip the quoted comment.
                        i += 3;
                        while !w[i - 1].ends_with('"') {
                            i += 1;
                        }
                    }
                    "-j" | "-g" => return rule.counter.clone(),
                    other => panic!("the emulator does not know {other:?} in {}", rule.spec),
                }
            }
        }
        None
    }

    proptest! {
        /// The endpoint chain decides every packet as `palisade_ir::eval` does and counts
        /// it on the same rule (or on the endpoint's default deny).
        #[test]
        fn the_chain_agrees_with_the_executable_meaning((mut rs, rules) in palisade_testkit::ir_strategy::allow_rules(), peer in 0u8..20, proto in 0usize..4, port in 70u16..100) {
            let direction = DirectionRules { isolated: true, isolated_by: vec!["ns/p".into()], rules, ..Default::default() };
            rs.endpoints.insert("ns/a".into(), Endpoint { name: "ns/a".into(), ips: vec![IpAddr::from([10, 1, 0, 1])], ingress: direction.clone(), egress: Default::default() });
            prop_assert!(rs.validate().is_ok(), "{:?}", rs.validate());
            let plan = plan(&rs, None);
            let transport = if proto == 3 { Transport::Other } else { Transport::Port(Protocol::ALL[proto], port) };
            let ip = IpAddr::from([10, 0, 0, peer]);
            let expected = match rs.judge(&direction, ip, transport) {
                DirectionVerdict::Allowed(origin) => CounterOwner::Rule(origin),
                _ => CounterOwner::DefaultDeny("ns/a".into(), Direction::Ingress),
            };
            let chain = endpoint_chain("ns/a", Direction::Ingress);
            prop_assert_eq!(run(&plan, Family::V4, &chain, ip, transport), Some(expected));
        }
    }
}
