//! Checks that a ruleset can be rendered into a script nft accepts. These are the IR's own
//! invariants (and name uniqueness), checked before touching the kernel so that a broken
//! ruleset fails with a named field instead of an nft line number. No policy meaning here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use palisade_ir::{Direction, NodeRuleset, PeerMatch, PortMatch};

use crate::Config;
use crate::names::{SetNames, chain_name, is_identifier};

/// A ruleset or configuration the nft backend cannot render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {reason}")]
pub struct RenderError {
    pub object: String,
    pub field: String,
    pub reason: String,
}

fn err(
    object: impl Into<String>,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> RenderError {
    RenderError {
        object: object.into(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks `rs` against what [`crate::render_full`] and [`crate::render_update`] assume:
/// every referenced set exists, set ranges are well-formed and disjoint (nft rejects
/// overlapping intervals), no address belongs to two endpoints (it would be two map keys),
/// and every derived kernel name is unique and valid.
pub fn validate(rs: &NodeRuleset, config: &Config) -> Result<(), RenderError> {
    if !is_identifier(&config.table) {
        return Err(err(
            "config",
            "table",
            format!("{:?} is not a valid nft table name", config.table),
        ));
    }

    let mut owner: BTreeMap<IpAddr, &str> = BTreeMap::new();
    let mut chains: BTreeMap<String, &str> = BTreeMap::new();
    for (key, ep) in &rs.endpoints {
        let object = format!("endpoint {key}");
        if *key != ep.name {
            return Err(err(
                object,
                "name",
                format!("differs from its key: {:?}", ep.name),
            ));
        }
        for ip in &ep.ips {
            if let Some(other) = owner.insert(*ip, &ep.name) {
                return Err(err(
                    object,
                    "ips",
                    format!("{ip} also belongs to endpoint {other}"),
                ));
            }
        }
        for direction in [Direction::Ingress, Direction::Egress] {
            let rules = ep.direction(direction);
            let field = direction.as_str();
            for (i, rule) in rules.rules.iter().enumerate() {
                if let PeerMatch::Set(n) = &rule.peers
                    && !rs.peer_sets.contains_key(n)
                {
                    return Err(err(
                        &object,
                        format!("{field}.rules[{i}].peers"),
                        format!("no peer set {n}"),
                    ));
                }
                if let PortMatch::Set(n) = &rule.ports
                    && !rs.port_sets.contains_key(n)
                {
                    return Err(err(
                        &object,
                        format!("{field}.rules[{i}].ports"),
                        format!("no port set {n}"),
                    ));
                }
            }
            let chain = chain_name(&ep.name, direction);
            if let Some(other) = chains.insert(chain.clone(), &ep.name) {
                return Err(err(
                    object,
                    field,
                    format!("chain name {chain} also derived for {other}"),
                ));
            }
        }
    }

    for (name, set) in &rs.peer_sets {
        let object = format!("peer set {name}");
        let mut prev: Option<(u128, bool)> = None;
        for (i, r) in set.ranges.iter().enumerate() {
            let field = format!("ranges[{i}]");
            let (first, last, v6) = match (r.first, r.last) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    (u128::from(u32::from(a)), u128::from(u32::from(b)), false)
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), true),
                _ => {
                    return Err(err(
                        object,
                        field,
                        "first and last are of different families",
                    ));
                }
            };
            if first > last {
                return Err(err(object, field, "first is after last"));
            }
            if let Some((prev_last, prev_v6)) = prev
                && prev_v6 == v6
                && first <= prev_last
            {
                return Err(err(
                    object,
                    field,
                    "overlaps or precedes the previous range",
                ));
            }
            if matches!(prev, Some((_, true))) && !v6 {
                return Err(err(object, field, "IPv4 range after an IPv6 range"));
            }
            prev = Some((last, v6));
        }
    }
    for (name, set) in &rs.port_sets {
        let object = format!("port set {name}");
        let mut sorted: Vec<_> = set.ranges.iter().collect();
        sorted.sort();
        for (i, r) in set.ranges.iter().enumerate() {
            if r.first > r.last {
                return Err(err(&object, format!("ranges[{i}]"), "first is after last"));
            }
        }
        for w in sorted.windows(2) {
            if w[0].protocol == w[1].protocol && w[1].first <= w[0].last {
                return Err(err(
                    object,
                    "ranges",
                    format!(
                        "{} {}-{} overlaps {}-{}",
                        w[1].protocol.as_str(),
                        w[1].first,
                        w[1].last,
                        w[0].first,
                        w[0].last
                    ),
                ));
            }
        }
    }

    // Kernel set names derive from hashes; make sure no two sets ended up with one name.
    let names = SetNames::new(rs);
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    let peers = names
        .peers
        .iter()
        .map(|((origin, ir), kernel)| (kernel, format!("peer set {ir} of {origin}")));
    let ports = names
        .ports
        .iter()
        .map(|(ir, kernel)| (kernel, format!("port set {ir}")));
    for (kernel, what) in peers.chain(ports) {
        if let Some(other) = seen.insert(kernel.as_str(), what.clone()) {
            return Err(err(
                what,
                "name",
                format!("kernel name {kernel} also derived for {other}"),
            ));
        }
    }
    Ok(())
}
