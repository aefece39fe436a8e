//! Proptest strategies over the IR, shared by every backend's property tests (a backend's
//! layout must decide and count as `palisade_ir::eval` on the same random rules).

use std::net::IpAddr;

use ipnet::IpNet;
use palisade_ir::{
    AllowRule, Direction, NodeRuleset, PeerMatch, PeerSet, PortMatch, PortRange, PortSet, Protocol,
    RuleOrigin, SetId,
};
use proptest::prelude::*;

/// 1-5 ingress allow rules of policies `ns/p<i>` and the ruleset holding their sets: peers
/// (any, or addresses and blocks in 10.0.0.0/28..32 that overlap on purpose) and ports (any,
/// or 1-19 ranges of 75-95 over TCP, UDP and SCTP, merged as the IR holds them).
pub fn allow_rules() -> impl Strategy<Value = (NodeRuleset, Vec<AllowRule>)> {
    let peer = prop_oneof![
        Just(None),
        (
            proptest::collection::btree_set(0u8..16, 0..5),
            proptest::collection::vec((0u8..16, 28u8..=32), 0..3)
        )
            .prop_map(Some),
    ];
    let port = prop_oneof![
        Just(None),
        proptest::collection::vec((0u8..3, 75u16..90, 0u16..6), 1..20).prop_map(Some)
    ];
    proptest::collection::vec((peer, port), 1..6).prop_map(|specs| {
        let mut rs = NodeRuleset::default();
        let mut rules = Vec::new();
        for (i, (peer, port)) in specs.into_iter().enumerate() {
            let peers = match peer {
                None => PeerMatch::Any,
                Some((addrs, nets)) => {
                    let mut blocks: Vec<IpNet> = nets
                        .into_iter()
                        .map(|(a, len)| {
                            IpNet::new(IpAddr::from([10, 0, 0, a]), len)
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
                Some(ranges) => {
                    let mut ranges: Vec<PortRange> = ranges
                        .into_iter()
                        .map(|(p, first, len)| PortRange {
                            protocol: Protocol::ALL[p as usize],
                            first,
                            last: first + len,
                        })
                        .collect();
                    // Sorted and merged per protocol, as the IR holds them.
                    ranges.sort();
                    let mut merged: Vec<PortRange> = Vec::new();
                    for r in ranges {
                        match merged.last_mut() {
                            Some(m) if m.protocol == r.protocol && r.first <= m.last + 1 => {
                                m.last = m.last.max(r.last)
                            }
                            _ => merged.push(r),
                        }
                    }
                    let set = PortSet { ranges: merged };
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
