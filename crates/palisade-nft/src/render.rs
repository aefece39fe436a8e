//! Plans -> nft scripts, pure. A full script and an update are built from the same
//! [`Plan`]s, so they can only disagree if nft does.
//!
//! Updates never make nft read a set back: nft (1.0.6 at least) fetches every element of
//! an interval set before an `add element` or `delete element` on it, which at 10,000
//! policies cost seconds. Elements are therefore only ever *declared* (`add map NAME {
//! ...; elements = { ... } }` adds them without a fetch); an interval map that loses an
//! element is flushed and declared whole, in the same transaction. Plain (non-interval)
//! maps take element commands, which need no fetch.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::plan::{ChainDef, DISPATCH, Plan, SetDef, is_group_chain, is_peer_map, is_rule_chain};

/// A rendered script and how many kernel operations it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Script {
    pub text: String,
    pub operations: usize,
}

const BASE_CHAINS: &str = "\
# Packets routed to, from and between local pods. The node's own traffic to its pods
# (kubelet probes) leaves through the output hook, not forward: it always passes.
# Egress of the source endpoint first, in a base chain of its own: an allowed egress
# accepts there, and the ingress base chain still judges the packet.
add chain inet TABLE egress { type filter hook forward priority filter - 1; policy accept; }
# Replies of allowed connections pass; policies judge new connections only.
add rule inet TABLE egress ct state established,related accept
add rule inet TABLE egress ct state invalid drop
add rule inet TABLE egress ip saddr vmap @egress_v4
add rule inet TABLE egress ip6 saddr vmap @egress_v6
# Ingress of the destination endpoint. Unfiltered directions have no map entry.
add chain inet TABLE ingress { type filter hook forward priority filter; policy accept; }
add rule inet TABLE ingress ct state established,related accept
add rule inet TABLE ingress ct state invalid drop
add rule inet TABLE ingress ip daddr vmap @ingress_v4
add rule inet TABLE ingress ip6 daddr vmap @ingress_v6
";

fn kind(set: &SetDef) -> &'static str {
    if set.is_map { "map" } else { "set" }
}

/// `add map inet T NAME { type ...; flags interval; elements = { ... } }`: declares the
/// set if missing and adds `elements` (nothing when empty).
fn declare(s: &mut String, t: &str, name: &str, set: &SetDef, elements: &BTreeSet<String>) {
    let _ = write!(
        s,
        "add {} inet {t} {name} {{ type {};",
        kind(set),
        set.type_spec
    );
    if set.interval {
        s.push_str(" flags interval;");
    }
    if !elements.is_empty() {
        s.push_str(" elements = {");
        for (i, e) in elements.iter().enumerate() {
            s.push_str(if i == 0 { "\n\t" } else { ",\n\t" });
            s.push_str(e);
        }
        s.push_str("\n}");
    }
    s.push_str(" }\n");
}

fn chain_decl(s: &mut String, t: &str, name: &str, chain: &ChainDef) {
    let _ = writeln!(
        s,
        "add chain inet {t} {name} {{ comment {}; }}",
        chain.comment
    );
}

fn chain_rules(s: &mut String, t: &str, name: &str, chain: &ChainDef) {
    for rule in &chain.rules {
        let _ = writeln!(s, "add rule inet {t} {name} {rule}");
    }
}

/// The whole table, replacing any table of that name, in one transaction.
pub(crate) fn full(plan: &Plan, node: &str, t: &str) -> Script {
    let mut s = String::new();
    let mut ops = 2;
    let node: String = node
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let _ = writeln!(
        s,
        "# palisade-nft: NetworkPolicy ruleset for node {node:?}, generated; do not edit."
    );
    let _ = writeln!(
        s,
        "# One transaction (nft -f): make sure the table exists, delete it, create it whole."
    );
    let _ = writeln!(
        s,
        "add table inet {t}\ndelete table inet {t}\nadd table inet {t}"
    );
    s.push_str(
        "# Rule chains count one policy rule each; endpoint chains end in their default deny.\n",
    );
    for (name, chain) in &plan.chains {
        ops += 1;
        chain_decl(&mut s, t, name, chain);
    }
    s.push_str("# Dispatch maps (endpoint address -> its chain), peer maps (peer -> group chain), port maps (protocol . port -> rule chain).\n");
    for (name, set) in &plan.sets {
        ops += 1 + set.elements.len();
        declare(&mut s, t, name, set, &set.elements);
    }
    for (name, chain) in &plan.chains {
        ops += chain.rules.len();
        chain_rules(&mut s, t, name, chain);
    }
    ops += 10;
    s.push_str(&BASE_CHAINS.replace("TABLE", t));
    Script {
        text: s,
        operations: ops,
    }
}

/// Moves a table holding `old` to `new` in one transaction, touching only what changed.
/// Every step stays valid inside the transaction: chains are declared before maps jump to
/// them, maps filled before chains look them up, and removals come last.
pub(crate) fn update(old: &Plan, new: &Plan, t: &str) -> Script {
    let mut s = String::new();
    let mut ops = 0;
    let changed_chain = |name: &String, chain: &Arc<ChainDef>| {
        old.chains
            .get(name)
            .is_none_or(|o| !Arc::ptr_eq(o, chain) && **o != **chain)
    };
    // 1. New chains, empty (maps may name them).
    for (name, chain) in &new.chains {
        if !old.chains.contains_key(name) {
            ops += 1;
            chain_decl(&mut s, t, name, chain);
        }
    }
    // 2. Sets and maps: new ones declared whole; changed ones get their additions
    //    declared, or (interval ones losing elements) are flushed and declared whole.
    for (name, set) in &new.sets {
        let Some(before) = old.sets.get(name) else {
            ops += 1 + set.elements.len();
            declare(&mut s, t, name, set, &set.elements);
            continue;
        };
        if Arc::ptr_eq(before, set) || before.elements == set.elements {
            continue;
        }
        let removed: BTreeSet<String> =
            before.elements.difference(&set.elements).cloned().collect();
        let added: BTreeSet<String> = set.elements.difference(&before.elements).cloned().collect();
        if set.interval && !removed.is_empty() {
            ops += 1 + set.elements.len();
            let _ = writeln!(s, "flush {} inet {t} {name}", kind(set));
            declare(&mut s, t, name, set, &set.elements);
            continue;
        }
        if !removed.is_empty() {
            ops += removed.len();
            let _ = writeln!(
                s,
                "delete element inet {t} {name} {{ {} }}",
                keys(&removed).join(", ")
            );
        }
        ops += added.len();
        declare(&mut s, t, name, set, &added);
    }
    // 3. Chains whose rules changed: flushed and refilled; new chains filled.
    for (name, chain) in &new.chains {
        if changed_chain(name, chain) {
            if old.chains.contains_key(name) {
                let _ = writeln!(s, "flush chain inet {t} {name}");
            }
            ops += 1 + chain.rules.len();
            chain_rules(&mut s, t, name, chain);
        }
    }
    // 4. What nothing refers to any more, each after what referred to it: endpoint chains
    //    (out of the dispatch maps since step 2), peer maps, group chains, the other sets
    //    and maps, and last the rule chains.
    let gone_chains: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    let gone_sets: Vec<&String> = old
        .sets
        .keys()
        .filter(|n| !new.sets.contains_key(*n))
        .collect();
    let endpoint = |n: &&&String| !is_rule_chain(n) && !is_group_chain(n);
    let steps: [Vec<(&str, &String)>; 5] = [
        gone_chains
            .iter()
            .filter(endpoint)
            .map(|n| ("chain", *n))
            .collect(),
        gone_sets
            .iter()
            .filter(|n| is_peer_map(n))
            .map(|n| (kind(&old.sets[*n]), *n))
            .collect(),
        gone_chains
            .iter()
            .filter(|n| is_group_chain(n))
            .map(|n| ("chain", *n))
            .collect(),
        gone_sets
            .iter()
            .filter(|n| !is_peer_map(n))
            .map(|n| (kind(&old.sets[*n]), *n))
            .collect(),
        gone_chains
            .iter()
            .filter(|n| is_rule_chain(n))
            .map(|n| ("chain", *n))
            .collect(),
    ];
    for (what, name) in steps.iter().flatten() {
        ops += 1;
        let _ = writeln!(s, "delete {what} inet {t} {name}");
    }
    debug_assert!(DISPATCH.iter().all(|(n, _, _)| new.sets.contains_key(*n)));
    Script {
        text: s,
        operations: ops,
    }
}

/// The key part of map elements (`key : verdict`), what `delete element` takes.
fn keys(elements: &BTreeSet<String>) -> Vec<&str> {
    elements
        .iter()
        .map(|e| e.split_once(" : ").map_or(e.as_str(), |(k, _)| k))
        .collect()
}
