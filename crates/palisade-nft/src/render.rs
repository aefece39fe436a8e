//! IR -> nft script, pure. Both renders go through one [`Plan`] (the kernel objects a
//! ruleset stands for), so a full render and an update can only disagree if nft does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use palisade_ir::{
    AllowRule, Direction, DirectionRules, Endpoint, IpRange, NodeRuleset, PeerMatch, PortMatch,
    PortRange,
};

use crate::Config;
use crate::names::{SetNames, chain_name};

/// nft rejects comments longer than this (NFTNL_UDATA_COMMENT_MAXLEN).
const COMMENT_MAX: usize = 128;

/// The dispatch maps, in the order the base chain consults them.
const MAPS: [&str; 4] = ["egress_v4", "egress_v6", "ingress_v4", "ingress_v6"];

fn map_name(direction: Direction, family: Family) -> &'static str {
    match (direction, family) {
        (Direction::Egress, Family::V4) => MAPS[0],
        (Direction::Egress, Family::V6) => MAPS[1],
        (Direction::Ingress, Family::V4) => MAPS[2],
        (Direction::Ingress, Family::V6) => MAPS[3],
    }
}

fn map_family(map: &str) -> Family {
    if map.ends_with("_v6") {
        Family::V6
    } else {
        Family::V4
    }
}

/// A rendered script and how many kernel operations it carries (for [`palisade_ir::ApplyReport`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Script {
    pub text: String,
    pub operations: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    /// The nft protocol keyword for address matches.
    fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "_v4",
            Family::V6 => "_v6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetKind {
    Addr(Family),
    /// `inet_proto . inet_service`, interval: one set carries every protocol of a port set.
    Ports,
}

impl SetKind {
    fn type_spec(self) -> &'static str {
        match self {
            SetKind::Addr(f) => f.addr_type(),
            SetKind::Ports => "inet_proto . inet_service",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SetDef {
    kind: SetKind,
    /// Rendered elements, in IR order (sorted by address / protocol and port).
    elements: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainDef {
    comment: String,
    rules: Vec<String>,
}

/// The kernel objects of one ruleset (beside the fixed base chain).
#[derive(Debug, Clone, Default)]
struct Plan {
    /// Kernel set name -> definition; sorted by name.
    sets: BTreeMap<String, SetDef>,
    /// Map name (one of [`MAPS`]) -> endpoint address -> chain to jump to.
    maps: BTreeMap<&'static str, BTreeMap<IpAddr, String>>,
    /// Endpoint chains in endpoint order, ingress before egress.
    chains: Vec<(String, ChainDef)>,
}

impl Plan {
    fn new(rs: &NodeRuleset) -> Plan {
        let names = SetNames::new(rs);
        let mut plan = Plan::default();
        for name in MAPS {
            plan.maps.insert(name, BTreeMap::new());
        }
        for ((_, ir_name), base) in &names.peers {
            // A rule naming a set the ruleset lacks gets no kernel set: nft rejects the
            // script (and `validate` reports it first).
            let Some(set) = rs.peer_sets.get(ir_name) else {
                continue;
            };
            for family in [Family::V4, Family::V6] {
                let ranges: Vec<&IpRange> = match family {
                    Family::V4 => set.v4().collect(),
                    Family::V6 => set.v6().collect(),
                };
                plan.sets.insert(
                    format!("{base}{}", family.suffix()),
                    SetDef {
                        kind: SetKind::Addr(family),
                        elements: ranges.into_iter().map(ip_element).collect(),
                    },
                );
            }
        }
        for (ir_name, set) in &rs.port_sets {
            plan.sets.insert(
                names.port(ir_name),
                SetDef {
                    kind: SetKind::Ports,
                    elements: set.ranges.iter().map(port_element).collect(),
                },
            );
        }
        for ep in rs.endpoints.values() {
            for direction in [Direction::Ingress, Direction::Egress] {
                let rules = ep.direction(direction);
                if !rules.isolated {
                    // Not isolated: no chain and no map entry, the packet goes on to the
                    // next check.
                    continue;
                }
                let chain = chain_name(&ep.name, direction);
                for ip in &ep.ips {
                    let map = map_name(direction, Family::of(ip));
                    plan.maps.entry(map).or_default().insert(*ip, chain.clone());
                }
                plan.chains.push((
                    chain,
                    ChainDef {
                        comment: comment(&format!("{} {}", ep.name, direction.as_str())),
                        rules: chain_rules(ep, direction, rules, &names),
                    },
                ));
            }
        }
        plan
    }

    fn chain_map(&self) -> BTreeMap<&str, &ChainDef> {
        self.chains.iter().map(|(n, c)| (n.as_str(), c)).collect()
    }
}

/// The rules of one isolated direction: one rule per allow rule and address family, then the
/// default deny. Ingress allows `accept` (the last check); egress allows `return`, so the
/// destination's ingress check still runs.
fn chain_rules(
    ep: &Endpoint,
    direction: Direction,
    rules: &DirectionRules,
    names: &SetNames,
) -> Vec<String> {
    // The chain is only entered through the dispatch maps, keyed by the endpoint's own
    // addresses: an address match of a family the endpoint lacks could never be reached.
    let families: BTreeSet<Family> = ep.ips.iter().map(Family::of).collect();
    let (peer_field, verdict) = match direction {
        Direction::Ingress => ("saddr", "accept"),
        Direction::Egress => ("daddr", "return"),
    };
    let mut out = Vec::new();
    for rule in &rules.rules {
        let AllowRule {
            peers,
            ports,
            origin,
        } = rule;
        let port_match = match ports {
            PortMatch::Any => String::new(),
            PortMatch::Set(n) => format!("meta l4proto . th dport @{} ", names.port(n)),
        };
        let tail = format!(
            "{port_match}counter {verdict} comment {}",
            comment(&origin.to_string())
        );
        match peers {
            PeerMatch::Any => out.push(tail),
            PeerMatch::Set(n) => {
                let base = names.peer(origin, n);
                for f in &families {
                    out.push(format!(
                        "{} {peer_field} @{base}{} {tail}",
                        f.keyword(),
                        f.suffix()
                    ));
                }
            }
        }
    }
    let deny = if rules.isolated_by.is_empty() {
        "default deny".to_string()
    } else {
        format!("default deny: {}", rules.isolated_by.join(", "))
    };
    out.push(format!("counter drop comment {}", comment(&deny)));
    out
}

/// A quoted nft comment: printable ASCII without quotes or backslashes, at most
/// [`COMMENT_MAX`] characters (longer text is cut and ends with `...`).
fn comment(text: &str) -> String {
    let mut clean: String = text
        .chars()
        .map(|c| match c {
            '"' | '\\' => '?',
            ' ' => c,
            c if c.is_ascii_graphic() => c,
            _ => '?',
        })
        .collect();
    if clean.len() > COMMENT_MAX {
        clean.truncate(COMMENT_MAX - 3);
        clean.push_str("...");
    }
    format!("\"{clean}\"")
}

/// One address, a CIDR when the range is exactly one, else `first-last`.
fn ip_element(r: &IpRange) -> String {
    if r.first == r.last {
        return r.first.to_string();
    }
    let (first, last, bits) = match (r.first, r.last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        // Mixed families: not a valid range; render it as is and let nft reject it.
        _ => return format!("{}-{}", r.first, r.last),
    };
    let span = first ^ last;
    let is_prefix = first <= last && span & span.wrapping_add(1) == 0 && first & span == 0;
    if is_prefix {
        format!("{}/{}", r.first, bits - span.count_ones())
    } else {
        format!("{}-{}", r.first, r.last)
    }
}

fn port_element(r: &PortRange) -> String {
    if r.first == r.last {
        format!("{} . {}", r.protocol.as_str(), r.first)
    } else {
        format!("{} . {}-{}", r.protocol.as_str(), r.first, r.last)
    }
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The whole table, replacing whatever table of that name exists, in one transaction.
pub(crate) fn full_script(rs: &NodeRuleset, config: &Config) -> Script {
    let plan = Plan::new(rs);
    let t = &config.table;
    let mut ops = 1;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# palisade-nft: NetworkPolicy ruleset for node {:?}, generated; do not edit.",
        one_line(&rs.node)
    );
    let _ = writeln!(
        s,
        "# One transaction (nft -f): make sure the table exists, delete it, create it whole."
    );
    let _ = writeln!(s, "table inet {t}");
    let _ = writeln!(s, "delete table inet {t}");
    let _ = writeln!(s, "table inet {t} {{");

    if !plan.sets.is_empty() {
        s.push_str(
            "\t# Peer sets (addresses, per family) are named by the policy rule using them, so a\n\
             \t# pod joining a selector only adds an element; port sets (protocol . port) by content.\n",
        );
    }
    for (name, set) in &plan.sets {
        ops += 1 + set.elements.len();
        let _ = writeln!(s, "\tset {name} {{");
        let _ = writeln!(s, "\t\ttype {}", set.kind.type_spec());
        s.push_str("\t\tflags interval\n");
        write_elements(&mut s, set.elements.iter().map(String::as_str));
        s.push_str("\t}\n");
    }

    s.push_str(
        "\t# Dispatch: a local endpoint's address -> its chain, for each isolated direction.\n",
    );
    for name in MAPS {
        let elements = &plan.maps[name];
        ops += 1 + elements.len();
        let _ = writeln!(s, "\tmap {name} {{");
        let _ = writeln!(s, "\t\ttype {} : verdict", map_family(name).addr_type());
        let rendered: Vec<String> = elements
            .iter()
            .map(|(ip, chain)| format!("{ip} : jump {chain}"))
            .collect();
        write_elements(&mut s, rendered.iter().map(String::as_str));
        s.push_str("\t}\n");
    }

    ops += 1 + BASE_RULES.len();
    s.push_str(BASE_CHAIN);

    for (name, chain) in &plan.chains {
        ops += 1 + chain.rules.len();
        let _ = writeln!(s, "\tchain {name} {{");
        let _ = writeln!(s, "\t\tcomment {}", chain.comment);
        for rule in &chain.rules {
            let _ = writeln!(s, "\t\t{rule}");
        }
        s.push_str("\t}\n");
    }
    s.push_str("}\n");
    Script {
        text: s,
        operations: ops,
    }
}

const BASE_RULES: [&str; 6] = [
    "ct state established,related accept",
    "ct state invalid drop",
    "ip saddr vmap @egress_v4",
    "ip6 saddr vmap @egress_v6",
    "ip daddr vmap @ingress_v4",
    "ip6 daddr vmap @ingress_v6",
];

const BASE_CHAIN: &str = "\
\t# Packets routed to, from and between local pods. The node's own traffic to its pods
\t# (kubelet probes) leaves through the output hook, not forward: it always passes.
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\t# Replies of allowed connections pass; policies judge new connections only.
\t\tct state established,related accept
\t\tct state invalid drop
\t\t# Egress of the source endpoint: its chain returns if allowed, else drops.
\t\tip saddr vmap @egress_v4
\t\tip6 saddr vmap @egress_v6
\t\t# Ingress of the destination endpoint: its chain accepts if allowed, else drops.
\t\tip daddr vmap @ingress_v4
\t\tip6 daddr vmap @ingress_v6
\t\t# Directions not isolated have no map entry: falling off the chain accepts.
\t}
";

fn write_elements<'a>(s: &mut String, elements: impl Iterator<Item = &'a str>) {
    let mut elements = elements.peekable();
    if elements.peek().is_none() {
        return;
    }
    s.push_str("\t\telements = {\n");
    for e in elements {
        let _ = writeln!(s, "\t\t\t{e},");
    }
    s.push_str("\t\t}\n");
}

/// Moves the table from `current` to `desired` in one transaction, touching only what
/// changed. The order keeps every step valid inside the transaction: new sets and elements
/// first, then chains (which may use the new sets), then the dispatch maps (which may jump to
/// the new chains), and last the removal of chains and sets nothing refers to any more.
pub(crate) fn update_script(
    current: &NodeRuleset,
    desired: &NodeRuleset,
    config: &Config,
) -> Script {
    let old = Plan::new(current);
    let new = Plan::new(desired);
    let t = &config.table;
    let mut cmds: Vec<String> = Vec::new();

    // 1. New sets, with their elements.
    for (name, set) in &new.sets {
        if !old.sets.contains_key(name) {
            cmds.push(format!(
                "add set inet {t} {name} {{ type {}; flags interval; }}",
                set.kind.type_spec()
            ));
            if !set.elements.is_empty() {
                cmds.push(format!(
                    "add element inet {t} {name} {{ {} }}",
                    set.elements.join(", ")
                ));
            }
        }
    }
    // 2. Changed sets: removed elements out first, so that a widened interval never
    //    overlaps the one it replaces.
    for (name, set) in &new.sets {
        let Some(before) = old.sets.get(name) else {
            continue;
        };
        let was: BTreeSet<&String> = before.elements.iter().collect();
        let is: BTreeSet<&String> = set.elements.iter().collect();
        let gone: Vec<&str> = before
            .elements
            .iter()
            .filter(|e| !is.contains(e))
            .map(String::as_str)
            .collect();
        let added: Vec<&str> = set
            .elements
            .iter()
            .filter(|e| !was.contains(e))
            .map(String::as_str)
            .collect();
        if !gone.is_empty() {
            cmds.push(format!(
                "delete element inet {t} {name} {{ {} }}",
                gone.join(", ")
            ));
        }
        if !added.is_empty() {
            cmds.push(format!(
                "add element inet {t} {name} {{ {} }}",
                added.join(", ")
            ));
        }
    }
    // 3. New and changed endpoint chains.
    let old_chains = old.chain_map();
    for (name, chain) in &new.chains {
        match old_chains.get(name.as_str()) {
            None => {
                cmds.push(format!(
                    "add chain inet {t} {name} {{ comment {}; }}",
                    chain.comment
                ));
            }
            // Same name = same endpoint and direction (the name hashes the endpoint name).
            Some(before) if before.rules == chain.rules => continue,
            Some(_) => cmds.push(format!("flush chain inet {t} {name}")),
        }
        for rule in &chain.rules {
            cmds.push(format!("add rule inet {t} {name} {rule}"));
        }
    }
    // 4. Dispatch maps: stale entries out (an address may have moved to another endpoint),
    //    then new entries in.
    for map in MAPS {
        let (before, after) = (&old.maps[map], &new.maps[map]);
        let gone: Vec<String> = before
            .iter()
            .filter(|(ip, chain)| after.get(ip) != Some(chain))
            .map(|(ip, _)| ip.to_string())
            .collect();
        if !gone.is_empty() {
            cmds.push(format!(
                "delete element inet {t} {map} {{ {} }}",
                gone.join(", ")
            ));
        }
    }
    for map in MAPS {
        let (before, after) = (&old.maps[map], &new.maps[map]);
        let added: Vec<String> = after
            .iter()
            .filter(|(ip, chain)| before.get(ip) != Some(chain))
            .map(|(ip, chain)| format!("{ip} : jump {chain}"))
            .collect();
        if !added.is_empty() {
            cmds.push(format!(
                "add element inet {t} {map} {{ {} }}",
                added.join(", ")
            ));
        }
    }
    // 5. Chains no map jumps to any more (flushed first: older kernels refuse to delete a
    //    chain that still has rules).
    let new_chains = new.chain_map();
    for (name, _) in &old.chains {
        if !new_chains.contains_key(name.as_str()) {
            cmds.push(format!("flush chain inet {t} {name}"));
            cmds.push(format!("delete chain inet {t} {name}"));
        }
    }
    // 6. Sets no rule refers to any more.
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            cmds.push(format!("delete set inet {t} {name}"));
        }
    }

    let operations = cmds.len();
    let mut text = String::new();
    for c in cmds {
        text.push_str(&c);
        text.push('\n');
    }
    Script { text, operations }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn range(a: &str, b: &str) -> IpRange {
        IpRange {
            first: a.parse().unwrap(),
            last: b.parse().unwrap(),
        }
    }

    #[test]
    fn ip_elements_use_cidr_only_when_exact() {
        assert_eq!(ip_element(&range("10.0.0.1", "10.0.0.1")), "10.0.0.1");
        assert_eq!(ip_element(&range("10.0.0.0", "10.0.0.255")), "10.0.0.0/24");
        assert_eq!(
            ip_element(&range("10.0.0.1", "10.0.0.255")),
            "10.0.0.1-10.0.0.255"
        );
        assert_eq!(
            ip_element(&range("10.0.0.0", "10.0.1.254")),
            "10.0.0.0-10.0.1.254"
        );
        assert_eq!(ip_element(&range("10.0.0.2", "10.0.0.3")), "10.0.0.2/31");
        assert_eq!(
            ip_element(&range("10.0.0.1", "10.0.0.2")),
            "10.0.0.1-10.0.0.2"
        );
        let all4 = IpRange {
            first: Ipv4Addr::UNSPECIFIED.into(),
            last: Ipv4Addr::BROADCAST.into(),
        };
        assert_eq!(ip_element(&all4), "0.0.0.0/0");
        let all6 = IpRange {
            first: Ipv6Addr::UNSPECIFIED.into(),
            last: Ipv6Addr::from(u128::MAX).into(),
        };
        assert_eq!(ip_element(&all6), "::/0");
        assert_eq!(ip_element(&range("fd00::", "fd00::ffff")), "fd00::/112");
        assert_eq!(
            ip_element(&range("fd00::1", "fd00::ffff")),
            "fd00::1-fd00::ffff"
        );
    }

    #[test]
    fn base_chain_holds_exactly_the_counted_rules() {
        let rules: Vec<&str> = BASE_CHAIN
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("type "))
            .filter(|l| !l.starts_with("chain ") && *l != "}")
            .collect();
        assert_eq!(rules, BASE_RULES);
    }

    #[test]
    fn comments_are_quoted_clean_and_bounded() {
        assert_eq!(comment("a/b ingress[0]"), "\"a/b ingress[0]\"");
        assert_eq!(comment("x\"y\\z\n"), "\"x?y?z?\"");
        let long = comment(&"p".repeat(300));
        assert_eq!(long.len(), COMMENT_MAX + 2);
        assert!(long.ends_with("...\""));
    }
}
