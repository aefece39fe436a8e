//! Kernel object names: valid nft identifiers, stable across renders.
//!
//! Endpoint chains are named from the endpoint (`ns/pod`, sanitized, plus a short hash of the
//! exact name). Sets are named from how they are *used*, not from their members: see
//! [`SetNames`].

use std::collections::{BTreeMap, BTreeSet};

use palisade_ir::{Direction, NodeRuleset, PeerMatch, PortMatch, RuleOrigin, SetName};
use sha2::{Digest, Sha256};

/// Longest sanitized endpoint name kept in a chain name (the hash keeps it unique).
const CHAIN_STEM_MAX: usize = 40;

/// `[A-Za-z][A-Za-z0-9_]*`, at most 64 bytes: a conservative subset of what nft accepts as an
/// identifier, never confused with a keyword, a number or an address.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

pub(crate) fn short_hash(input: &str, hex_len: usize) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..hex_len].to_string()
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
    let trimmed = out.trim_matches('_');
    let mut stem: String = trimmed.chars().take(CHAIN_STEM_MAX).collect();
    while stem.ends_with('_') {
        stem.pop();
    }
    stem
}

/// `ingress_<ns_pod>_<hash8>` / `egress_<ns_pod>_<hash8>`: readable, stable, unique per
/// endpoint name (the hash covers the exact name, the stem is only for people).
pub(crate) fn chain_name(endpoint: &str, direction: Direction) -> String {
    let stem = sanitize(endpoint);
    let hash = short_hash(endpoint, 8);
    if stem.is_empty() {
        format!("{}_{hash}", direction.as_str())
    } else {
        format!("{}_{stem}_{hash}", direction.as_str())
    }
}

/// Kernel names of the IR's peer and port sets.
///
/// Port sets keep their IR name (content-derived, `port_<hash>`): their content is stable and
/// shared by many rules, so naming by content is what keeps them stable.
///
/// Peer sets are different: the IR names them by their members, so a pod joining a selector
/// gives the set a new IR name, and renaming the kernel set would rewrite every chain using
/// it. A kernel peer set is instead named by the policy rule ([`RuleOrigin`]) that uses it:
/// "the peers of `ns/policy ingress[0]`". Members come and go as element updates; chains
/// change only when policies do. An IR set used by two policy rules becomes two kernel sets
/// with the same elements, so one policy's change never renames another policy's sets.
///
/// One origin may use several peer sets (an egress rule with a named port becomes one rule
/// per resolved port); those are told apart by the port sets paired with them, and if still
/// tied, by their IR name.
///
/// The names are a function of one ruleset alone, so a full render and an incremental
/// update always agree on them.
#[derive(Debug, Clone, Default)]
pub(crate) struct SetNames {
    /// (rule origin, IR peer set) -> kernel base name (`peer_<hash>`; the kernel sets are
    /// `<base>_v4` and `<base>_v6`).
    pub peers: BTreeMap<(RuleOrigin, SetName), String>,
    /// IR port set -> kernel name.
    pub ports: BTreeMap<SetName, String>,
}

impl SetNames {
    pub fn new(rs: &NodeRuleset) -> SetNames {
        let ports: BTreeMap<SetName, String> = rs
            .port_sets
            .keys()
            .map(|n| (n.clone(), port_name(n)))
            .collect();

        // origin -> IR peer set -> kernel names of the port sets paired with it.
        let mut uses: BTreeMap<&RuleOrigin, BTreeMap<&SetName, BTreeSet<String>>> = BTreeMap::new();
        for ep in rs.endpoints.values() {
            for rule in ep.ingress.rules.iter().chain(&ep.egress.rules) {
                let PeerMatch::Set(peer) = &rule.peers else {
                    continue;
                };
                let port = match &rule.ports {
                    PortMatch::Any => "any".to_string(),
                    PortMatch::Set(n) => port_name(n),
                };
                uses.entry(&rule.origin)
                    .or_default()
                    .entry(peer)
                    .or_default()
                    .insert(port);
            }
        }

        let mut peers = BTreeMap::new();
        for (origin, sets) in uses {
            let base = format!("peer\n{origin}\n");
            if sets.len() == 1 {
                for peer in sets.keys() {
                    peers.insert(((*origin).clone(), (*peer).clone()), hashed("peer", &base));
                }
                continue;
            }
            let mut by_ports: BTreeMap<String, Vec<&SetName>> = BTreeMap::new();
            for (peer, port_names) in &sets {
                let mut key = format!("{base}ports\n");
                for p in port_names {
                    key.push_str(p);
                    key.push('\n');
                }
                by_ports.entry(key).or_default().push(peer);
            }
            for (key, tied) in by_ports {
                let unique = tied.len() == 1;
                for peer in tied {
                    let key = if unique {
                        key.clone()
                    } else {
                        format!("{key}content\n{}\n", peer.0)
                    };
                    peers.insert(((*origin).clone(), peer.clone()), hashed("peer", &key));
                }
            }
        }
        SetNames { peers, ports }
    }

    /// Kernel base name of the peer set `name` as used by `origin`.
    pub fn peer(&self, origin: &RuleOrigin, name: &SetName) -> String {
        self.peers
            .get(&(origin.clone(), name.clone()))
            .cloned()
            .unwrap_or_else(|| hashed("peer", &format!("unknown\n{origin}\n{}", name.0)))
    }

    pub fn port(&self, name: &SetName) -> String {
        self.ports
            .get(name)
            .cloned()
            .unwrap_or_else(|| port_name(name))
    }
}

fn hashed(prefix: &str, key: &str) -> String {
    format!("{prefix}_{}", short_hash(key, 12))
}

/// The IR name when it has the IR's own shape (`port_` + lowercase hex), else a hash of it:
/// an engine-chosen name can never collide with a map or a peer set.
fn port_name(name: &SetName) -> String {
    match name.0.strip_prefix("port_") {
        Some(hex)
            if !hex.is_empty()
                && hex.len() <= 32
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) =>
        {
            name.0.clone()
        }
        _ => hashed("port", &format!("port\n{}", name.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("palisade"));
        assert!(is_identifier("peer_0a1b_v4"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("1abc"));
        assert!(!is_identifier("a-b"));
        assert!(!is_identifier("a b"));
        assert!(!is_identifier(&"a".repeat(65)));
    }

    #[test]
    fn chain_names_are_sanitized_stable_and_distinct() {
        let a = chain_name("default/web-1", Direction::Ingress);
        assert!(a.starts_with("ingress_default_web_1_"), "{a}");
        assert_eq!(a, chain_name("default/web-1", Direction::Ingress));
        assert!(is_identifier(&a));
        // Sanitizing maps both to the same stem; the hash keeps them apart.
        let b = chain_name("default/web.1", Direction::Ingress);
        assert_ne!(a, b);
        assert!(chain_name("default/web-1", Direction::Egress).starts_with("egress_"));
        let long = chain_name(&format!("ns/{}", "x".repeat(250)), Direction::Egress);
        assert!(is_identifier(&long), "{long}");
        assert!(is_identifier(&chain_name("//", Direction::Egress)));
    }
}
