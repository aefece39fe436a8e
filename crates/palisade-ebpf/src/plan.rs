//! IR -> map contents, pure (apart from the id allocator it is handed).
//!
//! - A *class* is one direction's rules (every tier, and isolation), shared by every
//!   endpoint direction with the same rules. Its peer trie entries cut the address line
//!   into disjoint pieces ([`palisade_ir::pieces`]), each pointing at a *group*: the set of
//!   rules holding that piece of peers.
//! - A *group*'s port trie entries cut the ports of its rules into disjoint pieces, each
//!   holding the verdict [`palisade_ir::eval`] gives there (action + RuleOrigin id).
//!   Protocols without ports meet the entry of protocol 0.
//! - An address no piece holds, or a port no entry holds, gets the class's *no match*
//!   verdict: default deny when isolated, audit-denied (passes, reported) when policies in
//!   audit mode would isolate it, open otherwise.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use palisade_ir::cidr::u128_to_addr;
use palisade_ir::events::EventTag;
use palisade_ir::{
    Action, AllowRule, Direction, DirectionRules, IpRange, NodeRuleset, PeerMatch, PortMatch,
    Protocol, RuleOrigin, SetId, TierRule,
};
use serde::{Deserialize, Serialize};

use crate::layout::{
    self, ACT_ALLOW, ACT_AUDIT, ACT_DEFAULT_DENY, ACT_DENY_RULE, ACT_OPEN, EpVal, MapKind, addr16,
    family,
};

/// Ids that must outlive one apply: RuleOrigin ids and default-deny slots index the
/// counter maps, so they are kept (and saved beside the pins) for as long as the maps live.
/// Class and group ids only link entries of one generation; they are interned by content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ids {
    /// Id = index + 1 (0: none).
    pub origins: Vec<RuleOrigin>,
    /// Endpoint names; slot = index.
    pub slots: Vec<String>,
    #[serde(skip)]
    origin_index: HashMap<RuleOrigin, u32>,
    #[serde(skip)]
    slot_index: HashMap<String, u32>,
    /// Content hash -> the classes with that hash (their rules, compared on lookup).
    #[serde(skip)]
    classes: HashMap<u64, Vec<(ClassKey, u32)>>,
    #[serde(skip)]
    class_count: u32,
    #[serde(skip)]
    groups: HashMap<String, u32>,
}

/// What makes a class: a direction's tiers and isolation (not `isolated_by`).
type ClassKey = (
    Vec<TierRule>,
    bool,
    Vec<AllowRule>,
    Option<Vec<AllowRule>>,
    Vec<TierRule>,
);

impl Ids {
    /// The class id of a direction's rules, by content: hashed, then compared, cloned only
    /// the first time (an update walks every endpoint, so this is its floor).
    pub fn class(&mut self, r: &DirectionRules) -> u32 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let audit = r.audit.as_ref().map(|a| &a.rules);
        (&r.admin, r.isolated, &r.rules, audit, &r.baseline).hash(&mut h);
        let bucket = self.classes.entry(h.finish()).or_default();
        if let Some((_, id)) = bucket.iter().find(|(k, _)| {
            k.1 == r.isolated
                && k.2 == r.rules
                && k.3.as_ref() == audit
                && k.0 == r.admin
                && k.4 == r.baseline
        }) {
            return *id;
        }
        self.class_count += 1;
        let id = self.class_count;
        bucket.push((
            (
                r.admin.clone(),
                r.isolated,
                r.rules.clone(),
                audit.cloned(),
                r.baseline.clone(),
            ),
            id,
        ));
        id
    }

    /// After deserializing: rebuild the indexes.
    pub fn reindex(&mut self) {
        self.origin_index = self
            .origins
            .iter()
            .enumerate()
            .map(|(i, o)| (o.clone(), i as u32 + 1))
            .collect();
        self.slot_index = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
    }

    pub fn origin(&mut self, o: &RuleOrigin) -> u32 {
        if let Some(&id) = self.origin_index.get(o) {
            return id;
        }
        self.origins.push(o.clone());
        let id = self.origins.len() as u32;
        self.origin_index.insert(o.clone(), id);
        id
    }

    pub fn slot(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.slot_index.get(name) {
            return id;
        }
        self.slots.push(name.to_string());
        let id = self.slots.len() as u32 - 1;
        self.slot_index.insert(name.to_string(), id);
        id
    }

    pub fn origin_of(&self, id: u32) -> Option<&RuleOrigin> {
        id.checked_sub(1).and_then(|i| self.origins.get(i as usize))
    }

    fn intern(map: &mut HashMap<String, u32>, key: String) -> (u32, bool) {
        let next = map.len() as u32 + 1;
        match map.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => (*e.get(), false),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(next);
                (next, true)
            }
        }
    }
}

/// Entries of one map (keys with generation 0).
pub type Part = Arc<BTreeMap<Vec<u8>, Vec<u8>>>;

/// What one generation of the policy maps holds, in parts that an update compares by
/// pointer first: a class or group computed in an earlier plan and still valid is the
/// same `Arc`, so an update only looks into what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub endpoints: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Class id -> its entries in `pal_peers`.
    pub classes: BTreeMap<u32, Part>,
    /// Group id -> its entries in `pal_ports`.
    pub groups: BTreeMap<u32, Part>,
}

impl Plan {
    /// Every entry of one policy map.
    pub fn map(&self, m: MapKind) -> BTreeMap<Vec<u8>, Vec<u8>> {
        match m {
            MapKind::Endpoints => self.endpoints.clone(),
            MapKind::Peers => self
                .classes
                .values()
                .flat_map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())))
                .collect(),
            MapKind::Ports => self
                .groups
                .values()
                .flat_map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())))
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    pub fn entries(&self) -> usize {
        self.endpoints.len()
            + self.classes.values().map(|p| p.len()).sum::<usize>()
            + self.groups.values().map(|p| p.len()).sum::<usize>()
    }
}

/// Classes and groups computed by earlier plans. A group's entries depend only on its
/// content key (port sets are named by content), so they stay valid; a class's depend on
/// the peer sets its rules name, so a change to one of them drops the class.
#[derive(Debug, Default)]
pub struct PlanCache {
    classes: HashMap<u32, (Part, Vec<u32>, BTreeSet<SetId>)>,
    groups: HashMap<u32, Part>,
}

impl PlanCache {
    pub fn clear(&mut self) {
        self.classes.clear();
        self.groups.clear();
    }

    /// Drops the classes whose rules name one of `changed`.
    pub fn invalidate(&mut self, changed: &BTreeSet<SetId>) {
        self.classes
            .retain(|_, (_, _, deps)| deps.is_disjoint(changed));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Admin(Action),
    Np,
    Audit,
    Baseline(Action),
}

struct Combined<'a> {
    tier: Tier,
    peers: &'a PeerMatch,
    ports: &'a PortMatch,
    origin: &'a RuleOrigin,
}

fn combined(rules: &DirectionRules) -> Vec<Combined<'_>> {
    let mut out = Vec::new();
    for r in &rules.admin {
        out.push(Combined {
            tier: Tier::Admin(r.action),
            peers: &r.peers,
            ports: &r.ports,
            origin: &r.origin,
        });
    }
    for r in &rules.rules {
        out.push(Combined {
            tier: Tier::Np,
            peers: &r.peers,
            ports: &r.ports,
            origin: &r.origin,
        });
    }
    for r in rules.audit.iter().flat_map(|a| &a.rules) {
        out.push(Combined {
            tier: Tier::Audit,
            peers: &r.peers,
            ports: &r.ports,
            origin: &r.origin,
        });
    }
    for r in &rules.baseline {
        out.push(Combined {
            tier: Tier::Baseline(r.action),
            peers: &r.peers,
            ports: &r.ports,
            origin: &r.origin,
        });
    }
    out
}

/// What decides a direction besides its rules: isolation, and whether policies in audit
/// mode would isolate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Isolation {
    isolated: bool,
    audited: bool,
}

impl Isolation {
    fn of(rules: &DirectionRules) -> Isolation {
        Isolation {
            isolated: rules.isolated,
            audited: rules.audit.is_some(),
        }
    }

    /// The verdict when no rule matches.
    fn no_match(self) -> u32 {
        if self.isolated {
            ACT_DEFAULT_DENY
        } else if self.audited {
            ACT_AUDIT
        } else {
            ACT_OPEN
        }
    }
}

/// The verdict of a direction when exactly the rules `matching` (indices into the
/// combined list, ascending) match the packet: [`palisade_ir::NodeRuleset::judge`].
fn decide<'a>(
    rules: &[Combined<'a>],
    isolation: Isolation,
    matching: &[usize],
) -> (u32, Option<&'a RuleOrigin>) {
    let isolated = isolation.isolated;
    for &i in matching {
        if let Tier::Admin(a) = rules[i].tier {
            match a {
                Action::Allow => return (ACT_ALLOW, Some(rules[i].origin)),
                Action::Deny => return (ACT_DENY_RULE, Some(rules[i].origin)),
                Action::Pass => break,
            }
        }
    }
    if isolated {
        let np = || matching.iter().filter(|&&i| rules[i].tier == Tier::Np);
        let named = np().find(|&&i| matches!(rules[i].peers, PeerMatch::Set(_)));
        let any = np().find(|&&i| matches!(rules[i].peers, PeerMatch::Any));
        return match named.or(any) {
            Some(&i) => (ACT_ALLOW, Some(rules[i].origin)),
            None => (ACT_DEFAULT_DENY, None),
        };
    }
    for &i in matching {
        if let Tier::Baseline(a) = rules[i].tier {
            return match a {
                Action::Allow | Action::Pass => (ACT_ALLOW, Some(rules[i].origin)),
                Action::Deny => (ACT_DENY_RULE, Some(rules[i].origin)),
            };
        }
    }
    let audit_allows = matching.iter().any(|&i| rules[i].tier == Tier::Audit);
    if isolation.audited && !audit_allows {
        (ACT_AUDIT, None)
    } else {
        (ACT_OPEN, None)
    }
}

/// An action and the rule it is counted on.
type Verdict<'a> = (u32, Option<&'a RuleOrigin>);

/// Builds the plan of `rs`, interning ids in `ids` and reusing what `cache` holds.
pub fn plan(rs: &NodeRuleset, ids: &mut Ids, cache: &mut PlanCache) -> Plan {
    let mut plan = Plan::default();
    for ep in rs.endpoints.values() {
        let mut val = EpVal {
            class: [0, 0],
            slot: ids.slot(&ep.name),
            miss: [ACT_OPEN, ACT_OPEN],
            tag: [0, 0],
        };
        for d in Direction::BOTH {
            let rules = ep.direction(d);
            if !rules.is_filtered() {
                continue;
            }
            let di = dir_index(d);
            val.miss[di] = Isolation::of(rules).no_match();
            val.tag[di] = if rules.isolated {
                EventTag::denied(&ep.name, d).hash
            } else if rules.audit.is_some() {
                EventTag::audit_denied(&ep.name, d).hash
            } else {
                0
            };
            let class = ids.class(rules);
            val.class[di] = class;
            if plan.classes.contains_key(&class) {
                continue;
            }
            if !cache.classes.contains_key(&class) {
                let computed = class_entries(rs, rules, class, ids, &mut cache.groups);
                cache.classes.insert(class, computed);
            }
            let (part, groups, _) = &cache.classes[&class];
            plan.classes.insert(class, Arc::clone(part));
            for g in groups {
                plan.groups.insert(*g, Arc::clone(&cache.groups[g]));
            }
        }
        for ip in &ep.ips {
            plan.endpoints.insert(layout::ep_key(ip), val.encode());
        }
    }
    // What this plan does not use is not kept.
    cache.classes.retain(|c, _| plan.classes.contains_key(c));
    cache.groups.retain(|g, _| plan.groups.contains_key(g));
    plan
}

pub fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// A class's peer entries, the groups they name, and the peer sets they depend on;
/// computes the groups `groups` lacks.
fn class_entries(
    rs: &NodeRuleset,
    rules: &DirectionRules,
    class: u32,
    ids: &mut Ids,
    groups: &mut HashMap<u32, Part>,
) -> (Part, Vec<u32>, BTreeSet<SetId>) {
    let mut peers = BTreeMap::new();
    let mut used: BTreeSet<u32> = BTreeSet::new();
    let list = combined(rules);
    let deps: BTreeSet<SetId> = list
        .iter()
        .filter_map(|c| match c.peers {
            PeerMatch::Set(id) => Some(id.clone()),
            PeerMatch::Any => None,
        })
        .collect();
    // peer_pieces takes AllowRules: only their peers matter to it.
    let as_allow: Vec<AllowRule> = list
        .iter()
        .map(|c| AllowRule {
            peers: c.peers.clone(),
            ports: PortMatch::Any,
            origin: c.origin.clone(),
        })
        .collect();
    let refs: Vec<&AllowRule> = as_allow.iter().collect();
    for v6 in [false, true] {
        // Pieces held by rules for every peer only are what is left around the named
        // pieces: one /0 entry holds them (longer prefixes win in the trie).
        let mut any_only: Option<u32> = None;
        for (first, last, holders) in rs.peer_pieces(&refs, v6) {
            let mut gkey = format!("{:?}", Isolation::of(rules));
            for &i in &holders {
                let c = &list[i];
                gkey.push_str(&format!(
                    "|{:?}:{}:{:?}:{:?}",
                    c.tier,
                    matches!(c.peers, PeerMatch::Set(_)),
                    c.ports,
                    c.origin
                ));
            }
            let (group, _) = Ids::intern(&mut ids.groups, gkey);
            used.insert(group);
            if let std::collections::hash_map::Entry::Vacant(e) = groups.entry(group) {
                let mut ports = BTreeMap::new();
                group_entries(
                    rs,
                    &list,
                    Isolation::of(rules),
                    &holders,
                    group,
                    ids,
                    &mut ports,
                );
                e.insert(Arc::new(ports));
            }
            if holders.iter().all(|&i| *list[i].peers == PeerMatch::Any) {
                any_only = Some(group);
                continue;
            }
            let range = IpRange {
                first: u128_to_addr(first, v6),
                last: u128_to_addr(last, v6),
            };
            for net in range.to_cidrs() {
                let addr = net.network();
                peers.insert(
                    layout::peer_key(family(&addr), class, &addr16(&addr), net.prefix_len()),
                    group.to_ne_bytes().to_vec(),
                );
            }
        }
        if let Some(group) = any_only {
            let zero = u128_to_addr(0, v6);
            peers.insert(
                layout::peer_key(family(&zero), class, &addr16(&zero), 0),
                group.to_ne_bytes().to_vec(),
            );
        }
    }
    (Arc::new(peers), used.into_iter().collect(), deps)
}

fn group_entries(
    rs: &NodeRuleset,
    list: &[Combined<'_>],
    isolation: Isolation,
    holders: &[usize],
    group: u32,
    ids: &mut Ids,
    ports: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) {
    let miss = isolation.no_match();
    // Ports only rules for every port take: one /0 entry per protocol; the pieces with
    // another verdict override it (longer prefixes win).
    let any: Vec<usize> = holders
        .iter()
        .copied()
        .filter(|&i| *list[i].ports == PortMatch::Any)
        .collect();
    let base = if any.is_empty() {
        (miss, None)
    } else {
        decide(list, isolation, &any)
    };
    let base_is_miss = base.0 == miss && base.1.is_none();
    if !base_is_miss {
        // Protocols without ports: the key of protocol 0, prefix 0 (no port bits).
        let oid = base.1.map_or(0, |o| ids.origin(o));
        ports.insert(
            layout::port_key(0, group, 0, 0),
            layout::verdict(base.0, oid),
        );
    }
    let mut emit =
        |proto: u8, first: u16, last: u16, (action, origin): (u32, Option<&RuleOrigin>)| {
            let oid = origin.map_or(0, |o| ids.origin(o));
            for (port, plen) in layout::port_prefixes(first, last) {
                ports.insert(
                    layout::port_key(proto, group, port, plen),
                    layout::verdict(action, oid),
                );
            }
        };
    if !base_is_miss {
        for protocol in Protocol::ALL {
            emit(protocol.number(), 0, u16::MAX, base);
        }
    }
    for protocol in Protocol::ALL {
        let spans: Vec<Vec<(u16, u16)>> = holders
            .iter()
            .map(|&i| rs.port_spans(list[i].ports, protocol))
            .collect();
        let mut cuts: BTreeSet<u32> = BTreeSet::new();
        for (&i, s) in holders.iter().zip(&spans) {
            if *list[i].ports == PortMatch::Any {
                continue;
            }
            for &(a, b) in s {
                cuts.insert(a.into());
                cuts.insert(u32::from(b) + 1);
            }
        }
        let cuts: Vec<u32> = cuts.into_iter().collect();
        // Merge neighbours with the same verdict before cutting into prefixes.
        let mut run: Option<(u16, u16, Verdict<'_>)> = None;
        for w in cuts.windows(2) {
            let (a, b) = (w[0] as u16, (w[1] - 1) as u16);
            let matching: Vec<usize> = holders
                .iter()
                .zip(&spans)
                .filter(|(_, s)| s.iter().any(|&(x, y)| x <= a && b <= y))
                .map(|(&i, _)| i)
                .collect();
            let v = if matching.is_empty() {
                (miss, None)
            } else {
                decide(list, isolation, &matching)
            };
            if v == base {
                if let Some((f, l, rv)) = run.take() {
                    emit(protocol.number(), f, l, rv);
                }
                continue;
            }
            match &mut run {
                Some((_, last, rv)) if *rv == v && u32::from(*last) + 1 == u32::from(a) => {
                    *last = b
                }
                _ => {
                    if let Some((f, l, rv)) = run.take() {
                        emit(protocol.number(), f, l, rv);
                    }
                    run = Some((a, b, v));
                }
            }
        }
        if let Some((f, l, rv)) = run {
            emit(protocol.number(), f, l, rv);
        }
    }
}

fn action_name(a: u32) -> &'static str {
    match a {
        ACT_ALLOW => "allow",
        ACT_DENY_RULE => "deny",
        ACT_DEFAULT_DENY => "default-deny",
        ACT_OPEN => "open",
        ACT_AUDIT => "audit-denied",
        _ => "?",
    }
}

fn proto_name(p: u8) -> String {
    match p {
        0 => "other".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        n => format!("proto{n}"),
    }
}

/// Canonical text of one generation's policy entries: classes and groups are numbered by
/// their content (not their ids), origins and slots named, so equal texts enforce the
/// same whatever the allocation or the generation.
pub fn canonical(
    endpoints: &BTreeMap<Vec<u8>, Vec<u8>>,
    peers: &BTreeMap<Vec<u8>, Vec<u8>>,
    ports: &BTreeMap<Vec<u8>, Vec<u8>>,
    origin_name: &dyn Fn(u32) -> String,
    slot_name: &dyn Fn(u32) -> String,
) -> String {
    // group id -> sorted lines
    let mut groups: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (k, v) in ports {
        if k.len() != 16 || v.len() != 8 {
            continue;
        }
        let plen = layout::u32_at(k, 0).saturating_sub(64);
        let group = layout::u32_at(k, 8);
        let port = u16::from_be_bytes([k[12], k[13]]);
        let action = layout::u32_at(v, 0);
        let origin = layout::u32_at(v, 4);
        let who = if origin == 0 {
            String::new()
        } else {
            format!(" {}", origin_name(origin))
        };
        groups.entry(group).or_default().push(format!(
            "{} {port}/{plen} {}{who}",
            proto_name(k[5]),
            action_name(action)
        ));
    }
    let group_text: BTreeMap<u32, String> = groups
        .into_iter()
        .map(|(g, mut lines)| {
            lines.sort();
            (g, lines.join("; "))
        })
        .collect();
    let group_names = numbering(group_text.values());
    let group_ref = |g: u32| {
        group_text.get(&g).map_or_else(
            || "group(empty)".to_string(),
            |t| format!("group{}", group_names[t]),
        )
    };
    let mut classes: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (k, v) in peers {
        if k.len() != 28 || v.len() != 4 {
            continue;
        }
        let plen = layout::u32_at(k, 0).saturating_sub(64);
        let fam = k[5];
        let class = layout::u32_at(k, 8);
        let addr = layout::addr_from16(fam, &k[12..28]);
        let net = IpNet::new(addr, plen as u8)
            .map_or_else(|_| format!("{addr}/{plen}"), |n| n.to_string());
        classes
            .entry(class)
            .or_default()
            .push(format!("{net} -> {}", group_ref(layout::u32_at(v, 0))));
    }
    let class_text: BTreeMap<u32, String> = classes
        .into_iter()
        .map(|(c, mut lines)| {
            lines.sort();
            (c, lines.join("; "))
        })
        .collect();
    let class_names = numbering(class_text.values());
    let mut out = String::new();
    for (t, n) in &group_names {
        out.push_str(&format!("group{n}: {t}\n"));
    }
    for (t, n) in &class_names {
        out.push_str(&format!("class{n}: {t}\n"));
    }
    let mut eps: Vec<String> = Vec::new();
    for (k, v) in endpoints {
        let (Some(val), true) = (EpVal::decode(v), k.len() == 20) else {
            continue;
        };
        let addr: IpAddr = layout::addr_from16(k[1], &k[4..20]);
        let side = |d: usize| {
            if val.class[d] == 0 {
                "-".to_string()
            } else {
                let c = class_text.get(&val.class[d]).map_or_else(
                    || "class(empty)".to_string(),
                    |t| format!("class{}", class_names[t]),
                );
                let miss = match val.miss[d] {
                    ACT_DEFAULT_DENY => " isolated",
                    ACT_AUDIT => " audited",
                    _ => "",
                };
                format!("{c}{miss}")
            }
        };
        eps.push(format!(
            "endpoint {addr} {}: ingress {} egress {}",
            slot_name(val.slot),
            side(0),
            side(1)
        ));
    }
    eps.sort();
    for e in eps {
        out.push_str(&e);
        out.push('\n');
    }
    out
}

fn numbering<'a>(texts: impl Iterator<Item = &'a String>) -> BTreeMap<&'a String, usize> {
    let sorted: BTreeSet<&String> = texts.collect();
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i))
        .collect()
}
