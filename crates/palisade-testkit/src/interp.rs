//! A tiny interpreter of the compiled IR: decides a new connection the way a dataplane
//! would, from the node rulesets alone (DESIGN.md "Enforcement point").
//!
//! - The source's egress is checked on the node where the source address is a local
//!   endpoint; the destination's ingress on the node where the destination address is.
//!   An address that is no local endpoint anywhere (an external host, a node, a
//!   hostNetwork pod) has no check on its side.
//! - A direction that is not isolated passes. An isolated one passes if some rule matches:
//!   the peer address is in the rule's peer set (or the rule takes any peer) AND the
//!   (protocol, port) is in its port set (or it takes any).

use std::net::IpAddr;

use palisade_ir::{DirectionRules, NodeRuleset, PeerMatch, PortMatch, Protocol};

/// The IR protocol for a model protocol.
pub fn ir_protocol(p: palisade_model::Protocol) -> Protocol {
    match p {
        palisade_model::Protocol::Tcp => Protocol::Tcp,
        palisade_model::Protocol::Udp => Protocol::Udp,
        palisade_model::Protocol::Sctp => Protocol::Sctp,
    }
}

/// Would the dataplanes programmed with `rulesets` let `src` open a connection to
/// `dst` on `protocol`/`port`? Panics if a rule names a set the ruleset lacks (a broken IR).
pub fn ir_allows(
    rulesets: &[NodeRuleset],
    src: IpAddr,
    dst: IpAddr,
    protocol: Protocol,
    port: u16,
) -> bool {
    for rs in rulesets {
        for ep in rs.endpoints.values() {
            if ep.ips.contains(&src) && !direction_allows(rs, &ep.egress, dst, protocol, port) {
                return false;
            }
            if ep.ips.contains(&dst) && !direction_allows(rs, &ep.ingress, src, protocol, port) {
                return false;
            }
        }
    }
    true
}

fn direction_allows(
    rs: &NodeRuleset,
    d: &DirectionRules,
    peer: IpAddr,
    protocol: Protocol,
    port: u16,
) -> bool {
    if !d.isolated {
        return true;
    }
    d.rules.iter().any(|rule| {
        let peer_ok = match &rule.peers {
            PeerMatch::Any => true,
            PeerMatch::Set(name) => {
                let set = rs.peer_sets.get(name).unwrap_or_else(|| {
                    panic!(
                        "node {}: rule {} names missing peer set {name}",
                        rs.node, rule.origin
                    )
                });
                set.ranges.iter().any(|r| {
                    r.first.is_ipv4() == peer.is_ipv4() && r.first <= peer && peer <= r.last
                })
            }
        };
        let port_ok = match &rule.ports {
            PortMatch::Any => true,
            PortMatch::Set(name) => {
                let set = rs.port_sets.get(name).unwrap_or_else(|| {
                    panic!(
                        "node {}: rule {} names missing port set {name}",
                        rs.node, rule.origin
                    )
                });
                set.ranges
                    .iter()
                    .any(|r| r.protocol == protocol && r.first <= port && port <= r.last)
            }
        };
        peer_ok && port_ok
    })
}
