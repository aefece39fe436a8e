//! Rules cut into disjoint pieces: what a backend whose lookups must not overlap (nft
//! interval maps, ipset, LPM tries) loads. Each piece names the rules that hold it, and a
//! port piece the first rule (in the given order) that takes it, the rule
//! [`crate::eval`] counts.

use std::collections::{BTreeMap, BTreeSet};

use crate::cidr::addr_to_u128;
use crate::{AllowRule, NodeRuleset, PeerMatch, PortMatch, Protocol};

/// Per protocol, disjoint port pieces `(protocol, first, last, index of the first rule
/// taking it)`, rules taking every port counting for TCP, UDP and SCTP too; and the first
/// rule taking every port, which protocols without ports (ICMP) meet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortPieces {
    pub ports: Vec<(Protocol, u16, u16, usize)>,
    pub any: Option<usize>,
}

/// The last address of a family, as an integer.
pub fn family_max(v6: bool) -> u128 {
    if v6 { u128::MAX } else { u32::MAX.into() }
}

impl NodeRuleset {
    /// The peers of a rule in one family, as sorted disjoint spans.
    pub fn peer_spans(&self, peers: &PeerMatch, v6: bool) -> Vec<(u128, u128)> {
        match peers {
            PeerMatch::Any => vec![(0, family_max(v6))],
            PeerMatch::Set(id) => self
                .peer_sets
                .get(id)
                .map(|s| {
                    s.ranges(v6)
                        .iter()
                        .map(|r| (addr_to_u128(r.first), addr_to_u128(r.last)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The ports of a rule for one protocol, as spans (every port for [`PortMatch::Any`]).
    pub fn port_spans(&self, ports: &PortMatch, protocol: Protocol) -> Vec<(u16, u16)> {
        match ports {
            PortMatch::Any => vec![(0, u16::MAX)],
            PortMatch::Set(id) => self
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

    /// The ports of a group of rules that all match the peer, as [`PortPieces`].
    pub fn port_pieces(&self, rules: &[&AllowRule]) -> PortPieces {
        let mut ports = Vec::new();
        for protocol in Protocol::ALL {
            let spans: Vec<Vec<(u16, u16)>> = rules
                .iter()
                .map(|r| self.port_spans(&r.ports, protocol))
                .collect();
            let mut cuts: BTreeSet<u32> = BTreeSet::new();
            for &(a, b) in spans.iter().flatten() {
                cuts.insert(a.into());
                cuts.insert(u32::from(b) + 1);
            }
            let cuts: Vec<u32> = cuts.into_iter().collect();
            for w in cuts.windows(2) {
                let (a, b) = (w[0] as u16, (w[1] - 1) as u16);
                let owner = spans
                    .iter()
                    .position(|s| s.iter().any(|&(x, y)| x <= a && b <= y));
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
        let any = rules.iter().position(|r| r.ports == PortMatch::Any);
        PortPieces { ports, any }
    }

    /// The peers of rules that name peers, cut into disjoint pieces of the address
    /// line; each piece lists the rules (indices into `rules`) whose peers hold it. Pieces are
    /// not merged with equal neighbours: a pod's address stays its own element, so a pod
    /// joining is an addition, never a change of an existing element.
    pub fn peer_pieces(&self, rules: &[&AllowRule], v6: bool) -> Vec<(u128, u128, Vec<usize>)> {
        let mut events: BTreeMap<u128, Vec<(usize, bool)>> = BTreeMap::new();
        for (i, rule) in rules.iter().enumerate() {
            for (a, b) in self.peer_spans(&rule.peers, v6) {
                events.entry(a).or_default().push((i, true));
                if b < family_max(v6) {
                    events.entry(b + 1).or_default().push((i, false));
                }
            }
        }
        let mut active: BTreeMap<usize, usize> = BTreeMap::new();
        let mut pieces = Vec::new();
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
            if !active.is_empty() {
                let last = points.get(n + 1).map_or(family_max(v6), |next| next - 1);
                pieces.push((*point, last, active.keys().copied().collect()));
            }
        }
        pieces
    }
}
