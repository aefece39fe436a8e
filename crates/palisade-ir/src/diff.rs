//! What changed between two rulesets of one node, set by set and member by member.
//! Backends render incremental updates from it; [`RulesetDiff::apply_to`] proves it says
//! everything (applying the diff of `a -> b` to `a` gives `b`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{Direction, Endpoint, NodeRuleset, PeerSet, PortSet, SetId};

/// Members that joined and left one peer set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberDelta {
    pub addresses_added: Vec<IpAddr>,
    pub addresses_removed: Vec<IpAddr>,
    pub blocks_added: Vec<IpNet>,
    pub blocks_removed: Vec<IpNet>,
}

impl MemberDelta {
    fn between(old: &PeerSet, new: &PeerSet) -> MemberDelta {
        let old_blocks: BTreeSet<&IpNet> = old.blocks.iter().collect();
        let new_blocks: BTreeSet<&IpNet> = new.blocks.iter().collect();
        MemberDelta {
            addresses_added: new.addresses.difference(&old.addresses).copied().collect(),
            addresses_removed: old.addresses.difference(&new.addresses).copied().collect(),
            blocks_added: new_blocks.difference(&old_blocks).map(|b| **b).collect(),
            blocks_removed: old_blocks.difference(&new_blocks).map(|b| **b).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.addresses_added.is_empty()
            && self.addresses_removed.is_empty()
            && self.blocks_added.is_empty()
            && self.blocks_removed.is_empty()
    }

    /// Elements touched (each added or removed member is one).
    pub fn len(&self) -> usize {
        self.addresses_added.len()
            + self.addresses_removed.len()
            + self.blocks_added.len()
            + self.blocks_removed.len()
    }
}

/// An endpoint present on both sides that changed: its new form and what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointChange {
    pub endpoint: Endpoint,
    pub ips_changed: bool,
    /// Directions whose rules (any tier, or isolation) changed.
    pub directions: Vec<Direction>,
}

/// `RulesetDiff::between(current, desired)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesetDiff {
    pub peer_sets_added: BTreeMap<SetId, PeerSet>,
    pub peer_sets_removed: Vec<SetId>,
    /// Sets on both sides whose members changed (the id stays: it names the definition).
    pub peer_set_members: BTreeMap<SetId, MemberDelta>,
    /// Port sets are named by content, so they are only ever added or removed.
    pub port_sets_added: BTreeMap<SetId, PortSet>,
    pub port_sets_removed: Vec<SetId>,
    pub endpoints_added: BTreeMap<String, Endpoint>,
    pub endpoints_removed: Vec<String>,
    pub endpoints_changed: BTreeMap<String, EndpointChange>,
}

impl RulesetDiff {
    pub fn between(current: &NodeRuleset, desired: &NodeRuleset) -> RulesetDiff {
        let mut diff = RulesetDiff::default();
        for (id, set) in &desired.peer_sets {
            match current.peer_sets.get(id) {
                None => {
                    diff.peer_sets_added.insert(id.clone(), set.clone());
                }
                Some(old) if old != set => {
                    diff.peer_set_members
                        .insert(id.clone(), MemberDelta::between(old, set));
                }
                Some(_) => {}
            }
        }
        diff.peer_sets_removed = removed(&current.peer_sets, &desired.peer_sets);
        for (id, set) in &desired.port_sets {
            if current.port_sets.get(id) != Some(set) {
                diff.port_sets_added.insert(id.clone(), set.clone());
            }
        }
        diff.port_sets_removed = removed(&current.port_sets, &desired.port_sets);
        for (name, ep) in &desired.endpoints {
            match current.endpoints.get(name) {
                None => {
                    diff.endpoints_added.insert(name.clone(), ep.clone());
                }
                Some(old) if old != ep => {
                    let directions = Direction::BOTH
                        .into_iter()
                        .filter(|d| old.direction(*d) != ep.direction(*d))
                        .collect();
                    diff.endpoints_changed.insert(
                        name.clone(),
                        EndpointChange {
                            endpoint: ep.clone(),
                            ips_changed: old.ips != ep.ips,
                            directions,
                        },
                    );
                }
                Some(_) => {}
            }
        }
        diff.endpoints_removed = removed(&current.endpoints, &desired.endpoints);
        diff
    }

    pub fn is_empty(&self) -> bool {
        *self == RulesetDiff::default()
    }

    /// Set elements the diff adds or removes (added sets count whole).
    pub fn element_changes(&self) -> usize {
        self.peer_sets_added
            .values()
            .map(PeerSet::len)
            .sum::<usize>()
            + self
                .peer_set_members
                .values()
                .map(MemberDelta::len)
                .sum::<usize>()
    }

    /// `current` moved by this diff: equals the `desired` the diff was computed for.
    pub fn apply_to(&self, current: &NodeRuleset) -> NodeRuleset {
        let mut out = current.clone();
        for id in &self.peer_sets_removed {
            out.peer_sets.remove(id);
        }
        for (id, delta) in &self.peer_set_members {
            let set = out.peer_sets.entry(id.clone()).or_default();
            for a in &delta.addresses_removed {
                set.addresses.remove(a);
            }
            set.addresses.extend(&delta.addresses_added);
            set.blocks.retain(|b| !delta.blocks_removed.contains(b));
            set.blocks.extend(&delta.blocks_added);
            set.blocks
                .sort_by_key(|n| (n.addr().is_ipv6(), n.network(), n.prefix_len()));
        }
        out.peer_sets.extend(self.peer_sets_added.clone());
        for id in &self.port_sets_removed {
            out.port_sets.remove(id);
        }
        out.port_sets.extend(self.port_sets_added.clone());
        for name in &self.endpoints_removed {
            out.endpoints.remove(name);
        }
        out.endpoints.extend(self.endpoints_added.clone());
        for (name, change) in &self.endpoints_changed {
            out.endpoints.insert(name.clone(), change.endpoint.clone());
        }
        out
    }
}

fn removed<K: Ord + Clone, V>(current: &BTreeMap<K, V>, desired: &BTreeMap<K, V>) -> Vec<K> {
    current
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{AllowRule, DirectionRules, PeerMatch, PortMatch, PortRange, Protocol, RuleOrigin};

    /// A small random ruleset: endpoints drawn from 4 names, peer sets from 3 ids over a
    /// few addresses and blocks, rules pointing at them.
    fn ruleset() -> impl Strategy<Value = NodeRuleset> {
        let set = (
            proptest::collection::btree_set(0u8..8, 0..4),
            proptest::collection::btree_set(0u8..3, 0..2),
        );
        let sets = proptest::collection::btree_map(0u8..3, set, 0..3);
        let endpoint = (0u8..4, proptest::option::of(0u8..3), any::<bool>(), 0u16..3);
        let endpoints = proptest::collection::vec(endpoint, 0..4);
        (sets, endpoints).prop_map(|(sets, endpoints)| {
            let mut rs = NodeRuleset {
                node: "n".into(),
                ..Default::default()
            };
            for (id, (addrs, blocks)) in sets {
                rs.peer_sets.insert(
                    SetId(format!("peer_{id}")),
                    PeerSet {
                        addresses: addrs
                            .into_iter()
                            .map(|a| IpAddr::from([10, 0, 0, a]))
                            .collect(),
                        blocks: blocks
                            .into_iter()
                            .map(|b| format!("10.{}.0.0/16", b + 1).parse().unwrap())
                            .collect(),
                    },
                );
            }
            for (n, set, isolated, port) in endpoints {
                let name = format!("ns/p{n}");
                let mut ingress = DirectionRules::default();
                if isolated {
                    ingress.isolated = true;
                    ingress.isolated_by = vec!["ns/pol".into()];
                    let ports = PortSet {
                        ranges: vec![PortRange {
                            protocol: Protocol::Tcp,
                            first: 80,
                            last: 80 + port,
                        }],
                    };
                    let port_id = ports.id();
                    rs.port_sets.insert(port_id.clone(), ports);
                    let peers = match set {
                        Some(s) if rs.peer_sets.contains_key(&SetId(format!("peer_{s}"))) => {
                            PeerMatch::Set(SetId(format!("peer_{s}")))
                        }
                        _ => PeerMatch::Any,
                    };
                    ingress.rules.push(AllowRule {
                        peers,
                        ports: PortMatch::Set(port_id),
                        origin: RuleOrigin {
                            policy_namespace: "ns".into(),
                            policy_name: "pol".into(),
                            direction: Direction::Ingress,
                            rule_index: 0,
                        },
                    });
                }
                rs.endpoints.insert(
                    name.clone(),
                    Endpoint {
                        name,
                        ips: vec![IpAddr::from([10, 9, 0, n])],
                        ingress,
                        egress: Default::default(),
                    },
                );
            }
            rs
        })
    }

    proptest! {
        #[test]
        fn applying_the_diff_gives_the_desired_ruleset(a in ruleset(), b in ruleset()) {
            let diff = RulesetDiff::between(&a, &b);
            prop_assert_eq!(diff.apply_to(&a), b.clone());
            prop_assert_eq!(diff.is_empty(), a == b);
            prop_assert!(RulesetDiff::between(&b, &b).is_empty());
        }
    }

    #[test]
    fn a_pod_joining_a_selector_is_one_added_address() {
        let mut a = NodeRuleset::default();
        let id = SetId("peer_x".into());
        a.peer_sets.insert(
            id.clone(),
            PeerSet {
                addresses: [IpAddr::from([10, 0, 0, 1])].into(),
                blocks: vec![],
            },
        );
        let mut b = a.clone();
        b.peer_sets
            .get_mut(&id)
            .unwrap()
            .addresses
            .insert(IpAddr::from([10, 0, 0, 2]));
        let diff = RulesetDiff::between(&a, &b);
        assert_eq!(diff.element_changes(), 1);
        assert_eq!(
            diff.peer_set_members[&id].addresses_added,
            [IpAddr::from([10, 0, 0, 2])]
        );
        assert!(diff.peer_sets_added.is_empty() && diff.endpoints_changed.is_empty());
    }
}
