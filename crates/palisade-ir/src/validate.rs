//! The IR's own invariants, checked before any backend touches the kernel, so that a
//! broken ruleset fails with a named field instead of a kernel error halfway through.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::{Direction, DirectionRules, NodeRuleset, PeerMatch, PortMatch};

/// A ruleset that breaks an invariant: which object, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {reason}")]
pub struct InvariantError {
    pub object: String,
    pub field: String,
    pub reason: String,
}

fn err(
    object: impl Into<String>,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> InvariantError {
    InvariantError {
        object: object.into(),
        field: field.into(),
        reason: reason.into(),
    }
}

impl NodeRuleset {
    /// Every referenced set exists; set members are well-formed (blocks sorted, disjoint,
    /// without host bits; port ranges ordered, sorted, merged, not empty); no address
    /// belongs to two endpoints, nor an endpoint two addresses of one family; the
    /// NetworkPolicy tier has rules only when isolated; pass only in the admin tier.
    pub fn validate(&self) -> Result<(), InvariantError> {
        let mut owner: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for (key, ep) in &self.endpoints {
            let object = format!("endpoint {key}");
            if *key != ep.name {
                return Err(err(
                    object,
                    "name",
                    format!("differs from its key: {:?}", ep.name),
                ));
            }
            if ep.ips.iter().filter(|ip| ip.is_ipv4()).count() > 1
                || ep.ips.iter().filter(|ip| ip.is_ipv6()).count() > 1
            {
                return Err(err(object, "ips", "more than one address of one family"));
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
            for direction in Direction::BOTH {
                self.validate_direction(&object, direction, ep.direction(direction))?;
            }
        }
        for (id, set) in &self.peer_sets {
            let object = format!("peer set {id}");
            for (i, b) in set.blocks.iter().enumerate() {
                if b.trunc() != *b {
                    return Err(err(
                        &object,
                        format!("blocks[{i}]"),
                        format!("{b} has host bits set"),
                    ));
                }
                if let Some(prev) = i.checked_sub(1).map(|p| set.blocks[p]) {
                    let ordered = (prev.addr().is_ipv6(), prev.broadcast())
                        < (b.addr().is_ipv6(), b.network());
                    if !ordered {
                        return Err(err(
                            &object,
                            format!("blocks[{i}]"),
                            format!("{b} is not after {prev} (blocks must be sorted and disjoint)"),
                        ));
                    }
                }
            }
        }
        for (id, set) in &self.port_sets {
            let object = format!("port set {id}");
            if set.ranges.is_empty() {
                return Err(err(
                    object,
                    "ranges",
                    "empty (a rule without ports is dropped)",
                ));
            }
            for (i, r) in set.ranges.iter().enumerate() {
                if r.first > r.last {
                    return Err(err(
                        &object,
                        format!("ranges[{i}]"),
                        format!("{} > {}", r.first, r.last),
                    ));
                }
                if let Some(prev) = i.checked_sub(1).map(|p| set.ranges[p])
                    && (prev.protocol, u32::from(prev.last) + 1) >= (r.protocol, u32::from(r.first))
                {
                    return Err(err(
                        &object,
                        format!("ranges[{i}]"),
                        "not sorted, or overlapping or adjacent to the previous range",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_direction(
        &self,
        object: &str,
        direction: Direction,
        rules: &DirectionRules,
    ) -> Result<(), InvariantError> {
        let d = direction.as_str();
        if !rules.isolated && !rules.rules.is_empty() {
            return Err(err(
                object,
                format!("{d}.rules"),
                "rules on a direction that is not isolated",
            ));
        }
        if rules.isolated == rules.isolated_by.is_empty() {
            return Err(err(
                object,
                format!("{d}.isolated_by"),
                "must name the isolating policies exactly when isolated",
            ));
        }
        if let Some(audit) = &rules.audit {
            if rules.isolated {
                return Err(err(
                    object,
                    format!("{d}.audit"),
                    "an audit tier on a direction enforced policies isolate (it could only add allows, which audit mode does not enforce)",
                ));
            }
            if audit.isolated_by.is_empty() {
                return Err(err(
                    object,
                    format!("{d}.audit.isolated_by"),
                    "must name the audited policies",
                ));
            }
        }
        if let Some(i) = rules
            .baseline
            .iter()
            .position(|r| r.action == crate::Action::Pass)
        {
            return Err(err(
                object,
                format!("{d}.baseline[{i}].action"),
                "pass is only meaningful in the admin tier",
            ));
        }
        let tiers = [
            (
                "admin",
                rules
                    .admin
                    .iter()
                    .map(|r| (&r.peers, &r.ports, &r.origin))
                    .collect::<Vec<_>>(),
            ),
            (
                "rules",
                rules
                    .rules
                    .iter()
                    .map(|r| (&r.peers, &r.ports, &r.origin))
                    .collect(),
            ),
            (
                "audit.rules",
                rules
                    .audit
                    .iter()
                    .flat_map(|a| &a.rules)
                    .map(|r| (&r.peers, &r.ports, &r.origin))
                    .collect(),
            ),
            (
                "baseline",
                rules
                    .baseline
                    .iter()
                    .map(|r| (&r.peers, &r.ports, &r.origin))
                    .collect(),
            ),
        ];
        for (tier, entries) in tiers {
            for (i, (peers, ports, origin)) in entries.into_iter().enumerate() {
                if let PeerMatch::Set(n) = peers
                    && !self.peer_sets.contains_key(n)
                {
                    return Err(err(
                        object,
                        format!("{d}.{tier}[{i}].peers"),
                        format!("no peer set {n}"),
                    ));
                }
                if let PortMatch::Set(n) = ports
                    && !self.port_sets.contains_key(n)
                {
                    return Err(err(
                        object,
                        format!("{d}.{tier}[{i}].ports"),
                        format!("no port set {n}"),
                    ));
                }
                if origin.direction != direction {
                    return Err(err(
                        object,
                        format!("{d}.{tier}[{i}].origin"),
                        format!("{origin} is a rule of the other direction"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::*;

    fn origin(d: Direction) -> RuleOrigin {
        RuleOrigin {
            policy_namespace: "ns".into(),
            policy_name: "p".into(),
            direction: d,
            rule_index: 0,
        }
    }

    fn base() -> NodeRuleset {
        let set = SetId("peer_x".into());
        let mut rs = NodeRuleset {
            node: "n".into(),
            ..Default::default()
        };
        rs.peer_sets.insert(
            set.clone(),
            PeerSet {
                addresses: ["10.0.0.1".parse().unwrap()].into(),
                blocks: vec!["10.1.0.0/16".parse().unwrap(), "fd00::/64".parse().unwrap()],
            },
        );
        rs.endpoints.insert(
            "ns/a".into(),
            crate::fixtures::endpoint_with_ingress(vec![AllowRule {
                peers: PeerMatch::Set(set),
                ports: PortMatch::Any,
                origin: origin(Direction::Ingress),
            }]),
        );
        rs
    }

    #[test]
    fn each_invariant_names_its_field() {
        assert_eq!(base().validate(), Ok(()));
        type Breaker = fn(&mut NodeRuleset);
        let cases: Vec<(&str, Breaker)> = vec![
            ("ingress.rules[0].peers", |rs| {
                rs.peer_sets.clear();
            }),
            ("blocks[0]", |rs| {
                rs.peer_sets.values_mut().next().unwrap().blocks[0] =
                    "10.1.2.0/16".parse().unwrap();
            }),
            ("blocks[1]", |rs| {
                rs.peer_sets.values_mut().next().unwrap().blocks.reverse();
            }),
            ("ips", |rs| {
                let mut other = rs.endpoints["ns/a"].clone();
                other.name = "ns/b".into();
                rs.endpoints.insert("ns/b".into(), other);
            }),
            ("ingress.isolated_by", |rs| {
                rs.endpoints
                    .get_mut("ns/a")
                    .unwrap()
                    .ingress
                    .isolated_by
                    .clear();
            }),
            ("egress.rules", |rs| {
                let rule = rs.endpoints["ns/a"].ingress.rules[0].clone();
                rs.endpoints
                    .get_mut("ns/a")
                    .unwrap()
                    .egress
                    .rules
                    .push(rule);
            }),
            ("ingress.rules[0].origin", |rs| {
                rs.endpoints.get_mut("ns/a").unwrap().ingress.rules[0]
                    .origin
                    .direction = Direction::Egress;
            }),
            ("name", |rs| {
                rs.endpoints.get_mut("ns/a").unwrap().name = "ns/z".into();
            }),
            ("ingress.audit", |rs| {
                let ingress = &mut rs.endpoints.get_mut("ns/a").unwrap().ingress;
                ingress.audit = Some(crate::AuditTier {
                    isolated_by: vec!["ns/audited".into()],
                    rules: Vec::new(),
                });
            }),
            ("egress.audit.isolated_by", |rs| {
                let egress = &mut rs.endpoints.get_mut("ns/a").unwrap().egress;
                egress.audit = Some(crate::AuditTier::default());
            }),
        ];
        for (field, breaker) in cases {
            let mut rs = base();
            breaker(&mut rs);
            let e = rs.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
    }
}
