//! The executable meaning of a ruleset: what a conforming dataplane does with the first
//! packet of a connection, and which counter it moves. Backends are tested against this
//! (and this against the engine's verdicts), so it is written for clarity, not speed.
//!
//! - The source's egress is judged on the node where the source address is a local
//!   endpoint, the destination's ingress on the node where the destination address is.
//!   An address that is no local endpoint anywhere (an external host, another node, a
//!   hostNetwork pod) has no check on its side.
//! - A pod's traffic to itself never leaves its network namespace: never judged.
//! - The node's own traffic to its pods leaves through the node's output path, which no
//!   backend filters: callers model it by not asking.
//! - Tiers in order (see [`DirectionRules`]). Within the NetworkPolicy tier every matching
//!   rule allows; the packet is *counted* on the first matching rule that names its peers,
//!   or if none does, on the first matching rule that takes any peer (IR order in each).
//!   Backends look peers up first: a rule for every peer is what is left when none matched.
//! - The audit tier only reports: a packet it would deny is [`DirectionVerdict::AuditDenied`]
//!   (allowed) unless the baseline tier decides it (then the baseline's verdict stands, and
//!   the audit report is not modelled here).

use std::net::IpAddr;

use crate::{
    Action, AllowRule, DirectionRules, NodeRuleset, PeerMatch, PortMatch, Protocol, RuleOrigin,
};

/// What the dataplane sees of a packet's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// TCP, UDP or SCTP to a destination port.
    Port(Protocol, u16),
    /// Any other protocol (ICMP...): only rules taking every port match it.
    Other,
}

/// How one direction of one endpoint judged a packet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DirectionVerdict {
    /// No tier decided and the direction is not isolated.
    Open,
    /// Allowed, counted on this rule.
    Allowed(RuleOrigin),
    /// Denied by a deny rule of the admin or baseline tier.
    DeniedByRule(RuleOrigin),
    /// Isolated and no rule allowed: the NetworkPolicy tier's default deny, counted on the
    /// endpoint and direction.
    DefaultDeny,
    /// Not isolated, but policies in audit mode would deny it: allowed, reported and
    /// counted on the endpoint and direction.
    AuditDenied,
}

impl DirectionVerdict {
    pub fn allows(&self) -> bool {
        matches!(
            self,
            DirectionVerdict::Open | DirectionVerdict::Allowed(_) | DirectionVerdict::AuditDenied
        )
    }
}

impl NodeRuleset {
    fn peer_matches(&self, m: &PeerMatch, peer: &IpAddr) -> bool {
        match m {
            PeerMatch::Any => true,
            PeerMatch::Set(id) => self.peer_sets.get(id).is_some_and(|s| s.contains(peer)),
        }
    }

    fn port_matches(&self, m: &PortMatch, transport: Transport) -> bool {
        match (m, transport) {
            (PortMatch::Any, _) => true,
            (PortMatch::Set(_), Transport::Other) => false,
            (PortMatch::Set(id), Transport::Port(p, port)) => {
                self.port_sets.get(id).is_some_and(|s| s.contains(p, port))
            }
        }
    }

    /// Judges a packet whose peer (the source for ingress, the destination for egress)
    /// is `peer`, against one direction of an endpoint of this ruleset. A rule naming a
    /// set the ruleset lacks matches nothing (and [`NodeRuleset::validate`] rejects it).
    pub fn judge(
        &self,
        rules: &DirectionRules,
        peer: IpAddr,
        transport: Transport,
    ) -> DirectionVerdict {
        for r in &rules.admin {
            if self.peer_matches(&r.peers, &peer) && self.port_matches(&r.ports, transport) {
                match r.action {
                    Action::Allow => return DirectionVerdict::Allowed(r.origin.clone()),
                    Action::Deny => return DirectionVerdict::DeniedByRule(r.origin.clone()),
                    Action::Pass => break,
                }
            }
        }
        if rules.isolated {
            return self
                .first_allowing(&rules.rules, peer, transport)
                .map_or(DirectionVerdict::DefaultDeny, |r| {
                    DirectionVerdict::Allowed(r.origin.clone())
                });
        }
        let audit_denied = rules
            .audit
            .as_ref()
            .is_some_and(|a| self.first_allowing(&a.rules, peer, transport).is_none());
        for r in &rules.baseline {
            if self.peer_matches(&r.peers, &peer) && self.port_matches(&r.ports, transport) {
                return match r.action {
                    Action::Allow | Action::Pass => DirectionVerdict::Allowed(r.origin.clone()),
                    Action::Deny => DirectionVerdict::DeniedByRule(r.origin.clone()),
                };
            }
        }
        if audit_denied {
            DirectionVerdict::AuditDenied
        } else {
            DirectionVerdict::Open
        }
    }

    /// The rule a packet is counted on: the first matching rule naming peers, else the
    /// first matching rule taking any peer.
    fn first_allowing<'r>(
        &self,
        rules: &'r [AllowRule],
        peer: IpAddr,
        transport: Transport,
    ) -> Option<&'r AllowRule> {
        let (named, any): (Vec<_>, Vec<_>) = rules
            .iter()
            .partition(|r| matches!(r.peers, PeerMatch::Set(_)));
        named
            .into_iter()
            .chain(any)
            .find(|r| self.peer_matches(&r.peers, &peer) && self.port_matches(&r.ports, transport))
    }
}

/// One side's check of a flow: on which node, for which endpoint, with what outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideCheck {
    pub node: String,
    pub endpoint: String,
    pub verdict: DirectionVerdict,
}

/// Both sides of a new connection as the dataplanes programmed with a cluster's rulesets
/// judge it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowVerdict {
    pub egress: Option<SideCheck>,
    pub ingress: Option<SideCheck>,
}

impl FlowVerdict {
    pub fn allowed(&self) -> bool {
        self.egress
            .iter()
            .chain(&self.ingress)
            .all(|c| c.verdict.allows())
    }
}

/// Judges `src -> dst` against every node's ruleset (see the module docs).
pub fn judge_flow(
    rulesets: &[NodeRuleset],
    src: IpAddr,
    dst: IpAddr,
    transport: Transport,
) -> FlowVerdict {
    let locate = |ip: IpAddr| {
        rulesets
            .iter()
            .find_map(|rs| rs.endpoint_of(&ip).map(|ep| (rs, ep)))
    };
    let (source, destination) = (locate(src), locate(dst));
    if src == dst
        || matches!((source, destination), (Some((a, x)), Some((b, y))) if a.node == b.node && x.name == y.name)
    {
        return FlowVerdict::default();
    }
    FlowVerdict {
        egress: source.map(|(rs, ep)| SideCheck {
            node: rs.node.clone(),
            endpoint: ep.name.clone(),
            verdict: rs.judge(&ep.egress, dst, transport),
        }),
        ingress: destination.map(|(rs, ep)| SideCheck {
            node: rs.node.clone(),
            endpoint: ep.name.clone(),
            verdict: rs.judge(&ep.ingress, src, transport),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn origin(d: Direction, i: usize) -> RuleOrigin {
        RuleOrigin {
            policy_namespace: "ns".into(),
            policy_name: "p".into(),
            direction: d,
            rule_index: i,
        }
    }

    /// One endpoint `ns/a` (10.0.0.2) whose ingress allows 10.0.0.1 on tcp/80 (rule 0)
    /// and 10.1.0.0/16 on everything (rule 1).
    fn ruleset() -> NodeRuleset {
        let mut rs = NodeRuleset {
            node: "n1".into(),
            ..Default::default()
        };
        let pods = SetId("peer_pods".into());
        let block = SetId("peer_block".into());
        rs.peer_sets.insert(
            pods.clone(),
            PeerSet {
                addresses: ["10.0.0.1".parse().unwrap()].into(),
                blocks: vec![],
            },
        );
        rs.peer_sets.insert(
            block.clone(),
            PeerSet {
                addresses: Default::default(),
                blocks: vec!["10.0.0.0/16".parse().unwrap()],
            },
        );
        let web = PortSet {
            ranges: vec![PortRange {
                protocol: Protocol::Tcp,
                first: 80,
                last: 80,
            }],
        };
        let web_id = web.id();
        rs.port_sets.insert(web_id.clone(), web);
        rs.endpoints.insert(
            "ns/a".into(),
            crate::fixtures::endpoint_with_ingress(vec![
                AllowRule {
                    peers: PeerMatch::Set(pods),
                    ports: PortMatch::Set(web_id),
                    origin: origin(Direction::Ingress, 0),
                },
                AllowRule {
                    peers: PeerMatch::Set(block),
                    ports: PortMatch::Any,
                    origin: origin(Direction::Ingress, 1),
                },
            ]),
        );
        rs
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_matching_rule_is_counted_and_other_transports_need_any_port() {
        let rs = [ruleset()];
        let v = judge_flow(
            &rs,
            ip("10.0.0.1"),
            ip("10.0.0.2"),
            Transport::Port(Protocol::Tcp, 80),
        );
        assert_eq!(
            v.ingress.unwrap().verdict,
            DirectionVerdict::Allowed(origin(Direction::Ingress, 0))
        );
        let v = judge_flow(&rs, ip("10.0.0.1"), ip("10.0.0.2"), Transport::Other);
        assert_eq!(
            v.ingress.unwrap().verdict,
            DirectionVerdict::Allowed(origin(Direction::Ingress, 1))
        );
        let v = judge_flow(
            &rs,
            ip("10.9.0.1"),
            ip("10.0.0.2"),
            Transport::Port(Protocol::Udp, 53),
        );
        assert!(!v.allowed());
        assert_eq!(v.ingress.unwrap().verdict, DirectionVerdict::DefaultDeny);
        // No endpoint on either side: nothing judges it.
        assert_eq!(
            judge_flow(&rs, ip("10.9.0.1"), ip("10.9.0.2"), Transport::Other),
            FlowVerdict::default()
        );
        // A pod to itself is never judged.
        assert!(judge_flow(&rs, ip("10.0.0.2"), ip("10.0.0.2"), Transport::Other).allowed());
    }

    #[test]
    fn tiers_are_met_in_order() {
        let mut rs = ruleset();
        let admin_origin = RuleOrigin {
            policy_namespace: String::new(),
            policy_name: "cnp".into(),
            direction: Direction::Ingress,
            rule_index: 0,
        };
        let ep = rs.endpoints.get_mut("ns/a").unwrap();
        ep.ingress.admin.push(TierRule {
            action: Action::Deny,
            peers: PeerMatch::Any,
            ports: PortMatch::Any,
            origin: admin_origin.clone(),
        });
        let verdict = |rs: &NodeRuleset| {
            rs.judge(
                &rs.endpoints["ns/a"].ingress,
                ip("10.0.0.1"),
                Transport::Port(Protocol::Tcp, 80),
            )
        };
        assert_eq!(
            verdict(&rs),
            DirectionVerdict::DeniedByRule(admin_origin.clone())
        );
        // Pass hands the packet to NetworkPolicy, which allows it.
        rs.endpoints.get_mut("ns/a").unwrap().ingress.admin[0].action = Action::Pass;
        assert_eq!(
            verdict(&rs),
            DirectionVerdict::Allowed(origin(Direction::Ingress, 0))
        );
        // Not isolated: the baseline tier decides, and without a match the packet passes.
        let ep = rs.endpoints.get_mut("ns/a").unwrap();
        ep.ingress.isolated = false;
        ep.ingress.isolated_by.clear();
        ep.ingress.rules.clear();
        ep.ingress.baseline.push(TierRule {
            action: Action::Deny,
            peers: PeerMatch::Any,
            ports: PortMatch::Any,
            origin: admin_origin.clone(),
        });
        assert_eq!(verdict(&rs), DirectionVerdict::DeniedByRule(admin_origin));
        rs.endpoints
            .get_mut("ns/a")
            .unwrap()
            .ingress
            .baseline
            .clear();
        assert_eq!(verdict(&rs), DirectionVerdict::Open);
    }
}
