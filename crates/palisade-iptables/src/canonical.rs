//! What the kernel holds of Palisade's objects in a canonical form (comparable between a
//! state built by updates and one built by a full apply), and the counters of its rules.

use std::collections::BTreeMap;

use palisade_ir::Count;

use crate::plan::{FORWARD_CHAIN, PREFIX};
use crate::render::strip_counters;

/// Palisade's part of `iptables-save -t filter` (IPv4, IPv6) and `ipset save`: chains
/// sorted by name with their rules in order (the order matters), the hook rules of
/// `FORWARD`, then sets sorted by name with their elements sorted. Counters, hash sizes and
/// ipset's random `initval` are left out; other programs' chains, rules and sets too.
pub fn canonical_state(save_v4: &str, save_v6: &str, ipset_save: &str) -> String {
    let mut out = String::new();
    for (family, save) in [("ipv4", save_v4), ("ipv6", save_v6)] {
        let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut hooks = Vec::new();
        for raw in save.lines() {
            let line = strip_counters(raw);
            if let Some(rest) = line.strip_prefix(':') {
                let name = rest.split_whitespace().next().unwrap_or_default();
                if name.starts_with(PREFIX) {
                    chains.entry(name.to_string()).or_default();
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                if chain.starts_with(PREFIX) {
                    chains
                        .entry(chain.to_string())
                        .or_default()
                        .push(spec.to_string());
                } else if chain == "FORWARD"
                    && spec
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .ends_with(&["-j", FORWARD_CHAIN])
                {
                    hooks.push(spec.to_string());
                }
            }
        }
        for hook in hooks {
            out.push_str(&format!("{family} hook FORWARD {hook}\n"));
        }
        for (name, rules) in chains {
            out.push_str(&format!("{family} chain {name}\n"));
            for r in rules {
                out.push_str(&format!("    {r}\n"));
            }
        }
    }
    let mut sets: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in ipset_save.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["create", name, kind, rest @ ..] if name.starts_with(PREFIX) => {
                let family = rest
                    .iter()
                    .position(|x| *x == "family")
                    .and_then(|i| rest.get(i + 1))
                    .copied()
                    .unwrap_or("inet");
                sets.entry(name.to_string()).or_default().0 = format!("{kind} family {family}");
            }
            ["add", name, element, ..] if name.starts_with(PREFIX) => {
                sets.entry(name.to_string())
                    .or_default()
                    .1
                    .push(element.to_string());
            }
            _ => {}
        }
    }
    for (name, (decl, mut elements)) in sets {
        elements.sort();
        out.push_str(&format!("set {name} {decl}\n"));
        for e in elements {
            out.push_str(&format!("    {e}\n"));
        }
    }
    out
}

/// `[packets:bytes] -A CHAIN ...` of Palisade's chains: (chain, index of the rule in its
/// chain, counter).
pub(crate) fn rule_counters(save: &str) -> Vec<(String, usize, Count)> {
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for raw in save.lines() {
        let line = raw.trim();
        let (count, rest) = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
            Some((c, rest)) => (c, rest),
            None => ("0:0", line),
        };
        let Some(rest) = rest.strip_prefix("-A ") else {
            continue;
        };
        let chain = rest.split_whitespace().next().unwrap_or_default();
        if !chain.starts_with(PREFIX) {
            continue;
        }
        let i = index.entry(chain.to_string()).or_insert(0);
        let (p, b) = count.split_once(':').unwrap_or(("0", "0"));
        out.push((
            chain.to_string(),
            *i,
            Count {
                packets: p.parse().unwrap_or(0),
                bytes: b.parse().unwrap_or(0),
            },
        ));
        *i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_order_of_sets_do_not_matter_rule_order_does() {
        let a = "*filter\n:FORWARD ACCEPT [5:300]\n:PAL-X - [0:0]\n:OTHER - [0:0]\n[1:60] -A FORWARD -m comment --comment \"palisade: NetworkPolicy\" -j PAL-FORWARD\n[3:180] -A PAL-X -j RETURN\n[0:0] -A PAL-X -j DROP\n[9:9] -A OTHER -j ACCEPT\nCOMMIT\n";
        let b = a
            .replace("[3:180]", "[0:0]")
            .replace("[9:9] -A OTHER -j ACCEPT\n", "");
        let s1 = "create PAL-a hash:net family inet hashsize 1024 maxelem 9 initval 0x1\nadd PAL-a 10.0.0.2\nadd PAL-a 10.0.0.1\n";
        let s2 = "create PAL-a hash:net family inet hashsize 4096 maxelem 9 initval 0x2\nadd PAL-a 10.0.0.1\nadd PAL-a 10.0.0.2\ncreate other hash:ip\n";
        assert_eq!(canonical_state(a, "", s1), canonical_state(&b, "", s2));
        let swapped = a.replace(
            "-A PAL-X -j RETURN\n[0:0] -A PAL-X -j DROP",
            "-A PAL-X -j DROP\n[0:0] -A PAL-X -j RETURN",
        );
        assert_ne!(
            canonical_state(a, "", s1),
            canonical_state(&swapped, "", s1)
        );
        let counts = rule_counters(a);
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[0].0, "PAL-X");
        assert_eq!(counts[0].2.packets, 3);
        assert_eq!(counts[1].1, 1);
    }
}
