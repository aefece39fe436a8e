//! The plain reference evaluator: the checklist of docs/SEMANTICS.md (§1-§11) turned into code, as
//! literally as possible. No indexes, no caches: every question loops over every object.
//! It is deliberately written without looking at the engine's structure, so that the two
//! can be compared (property tests) and a disagreement points at a bug in one of them.
//!
//! Conventions it fixes (the checklist leaves them to the caller):
//! - An IP endpoint is taken literally: an address outside the cluster's pods, even if a
//!   pod happens to hold it. Only ipBlocks can match it.
//! - The flow's family is the one given; when absent, the family of the IP endpoint, else
//!   of the source pod's first address, else of the destination pod's first address,
//!   else IPv4. A pod without an address of that family is still a pod (selectors match
//!   it) but no ipBlock matches it.
//! - Pods are "running" unless Succeeded or Failed (§10): Pending/Unknown pods keep their
//!   address and their policies.
//! - A pod's traffic to itself never leaves its network namespace: allowed on both sides
//!   whatever the policies (docs/SEMANTICS.md, "Choices beyond the checklist").

use std::collections::BTreeSet;
use std::net::IpAddr;

use palisade_model::{
    Direction, IpFamily, Key, LabelSelector, Labels, Namespace, NetworkPolicy, Operator, Peer, Pod,
    PodPhase, PortSpec, Protocol, Rule,
};

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefEndpoint {
    Pod(Key),
    Ip(IpAddr),
}

/// The verdict of one side (the source's egress or the destination's ingress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefSide {
    /// Not a pod: no policy applies.
    External,
    /// A hostNetwork pod: cannot be isolated (§11).
    HostNetwork,
    /// A pod to itself: not filtered.
    SelfTraffic,
    /// No selecting policy isolates this direction (§1).
    NotIsolated,
    /// No enforced policy isolates this direction, and these policies in audit mode would
    /// deny the flow (it passes).
    AuditDenied { audited_by: BTreeSet<Key> },
    /// Isolated by these policies; these (policy, rule index) allow the flow. Empty
    /// `allowed_by` = denied.
    Isolated {
        isolated_by: BTreeSet<Key>,
        allowed_by: BTreeSet<(Key, usize)>,
    },
}

impl RefSide {
    pub fn allows(&self) -> bool {
        match self {
            RefSide::Isolated { allowed_by, .. } => !allowed_by.is_empty(),
            _ => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefVerdict {
    pub family: IpFamily,
    pub egress: RefSide,
    pub ingress: RefSide,
}

impl RefVerdict {
    /// §3: both sides must allow.
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// Is the flow allowed? Panics if a pod endpoint is not a live pod of `pods`, or if two IP
/// endpoints are of different families (caller errors); see [`reference_explain`].
#[allow(clippy::too_many_arguments)]
pub fn reference_allows(
    namespaces: &[Namespace],
    pods: &[Pod],
    policies: &[NetworkPolicy],
    src: &RefEndpoint,
    dst: &RefEndpoint,
    protocol: Protocol,
    port: u16,
    family: Option<IpFamily>,
) -> bool {
    reference_explain(namespaces, pods, policies, src, dst, protocol, port, family)
        .unwrap_or_else(|e| panic!("reference_allows: {e}"))
        .allowed()
}

/// The verdict with its reasons, or an error for an unknown pod or mixed-family IPs.
#[allow(clippy::too_many_arguments)]
pub fn reference_explain(
    namespaces: &[Namespace],
    pods: &[Pod],
    policies: &[NetworkPolicy],
    src: &RefEndpoint,
    dst: &RefEndpoint,
    protocol: Protocol,
    port: u16,
    family: Option<IpFamily>,
) -> Result<RefVerdict, String> {
    let world = World {
        namespaces,
        pods,
        policies,
    };
    let src = world.resolve(src)?;
    let dst = world.resolve(dst)?;
    if let (Who::Ip(a), Who::Ip(b)) = (&src, &dst)
        && a.is_ipv4() != b.is_ipv4()
    {
        return Err(format!("{a} and {b} are of different families"));
    }
    let family = family.unwrap_or_else(|| derive_family(&src, &dst));
    if let (Who::Pod(a), Who::Pod(b)) = (&src, &dst)
        && a.key == b.key
    {
        return Ok(RefVerdict {
            family,
            egress: RefSide::SelfTraffic,
            ingress: RefSide::SelfTraffic,
        });
    }
    let src_seen = world.seen_as(&src, family);
    let dst_seen = world.seen_as(&dst, family);
    let query = Query {
        protocol,
        port,
        destination: dst_seen.pod,
    };
    Ok(RefVerdict {
        family,
        // The source's egress: the peer is the destination.
        egress: world.side(&src, Direction::Egress, &dst_seen, &query),
        // The destination's ingress: the peer is the source.
        ingress: world.side(&dst, Direction::Ingress, &src_seen, &query),
    })
}

struct World<'a> {
    namespaces: &'a [Namespace],
    pods: &'a [Pod],
    policies: &'a [NetworkPolicy],
}

enum Who<'a> {
    Pod(&'a Pod),
    Ip(IpAddr),
}

/// How the other end of the flow appears to a rule.
struct Seen<'a> {
    /// The pod, if selectors can see it (a pod, and not hostNetwork: §11).
    pod: Option<&'a Pod>,
    /// The address it uses in this flow, if it has one (ipBlocks look at this, §6).
    ip: Option<IpAddr>,
}

struct Query<'a> {
    protocol: Protocol,
    port: u16,
    /// The pod receiving the connection, where named ports are looked up (§8).
    destination: Option<&'a Pod>,
}

fn family_of(ip: &IpAddr) -> IpFamily {
    match ip {
        IpAddr::V4(_) => IpFamily::V4,
        IpAddr::V6(_) => IpFamily::V6,
    }
}

fn derive_family(src: &Who, dst: &Who) -> IpFamily {
    for who in [src, dst] {
        if let Who::Ip(ip) = who {
            return family_of(ip);
        }
    }
    for who in [src, dst] {
        if let Who::Pod(p) = who
            && let Some(ip) = p.ips.first()
        {
            return family_of(ip);
        }
    }
    IpFamily::V4
}

fn address_of(pod: &Pod, family: IpFamily) -> Option<IpAddr> {
    pod.ips.iter().copied().find(|ip| family_of(ip) == family)
}

/// §7, written out: matchLabels AND every expression.
fn selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    for (k, v) in &selector.match_labels {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for req in &selector.match_expressions {
        let value = labels.get(&req.key);
        let ok = match req.operator {
            Operator::In => match value {
                Some(v) => req.values.contains(v),
                None => false,
            },
            // NotIn is true when the key is missing.
            Operator::NotIn => match value {
                Some(v) => !req.values.contains(v),
                None => true,
            },
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// An address as (family, 128-bit integer, bit width).
fn as_bits(ip: &IpAddr) -> (bool, u128, u32) {
    match ip {
        IpAddr::V4(a) => (true, u128::from(u32::from(*a)), 32),
        IpAddr::V6(a) => (false, u128::from(*a), 128),
    }
}

/// Is `ip` inside `net`? Different families never match (§9).
fn in_net(net: &ipnet::IpNet, ip: &IpAddr) -> bool {
    let (net_v4, net_bits, width) = as_bits(&net.network());
    let (ip_v4, ip_bits, _) = as_bits(ip);
    if net_v4 != ip_v4 {
        return false;
    }
    let host_bits = width - u32::from(net.prefix_len());
    if host_bits >= 128 {
        return true;
    }
    (net_bits >> host_bits) == (ip_bits >> host_bits)
}

impl<'a> World<'a> {
    /// §10: Succeeded and Failed pods are gone.
    fn live_pods(&self) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .iter()
            .filter(|p| !matches!(p.phase, PodPhase::Succeeded | PodPhase::Failed))
    }

    fn resolve(&self, e: &RefEndpoint) -> Result<Who<'a>, String> {
        match e {
            RefEndpoint::Ip(ip) => Ok(Who::Ip(*ip)),
            RefEndpoint::Pod(key) => {
                // The last declaration of a key wins, as when objects are applied in order.
                let found = self.live_pods().filter(|p| &p.key == key).last();
                found
                    .map(Who::Pod)
                    .ok_or_else(|| format!("no live pod {key}"))
            }
        }
    }

    /// A namespace's labels, with the implicit name label (§7), declared or not.
    fn namespace_labels(&self, name: &str) -> Labels {
        let mut labels = Labels::new();
        if let Some(ns) = self.namespaces.iter().rfind(|n| n.name == name) {
            labels = ns.labels.clone();
        }
        labels.insert("kubernetes.io/metadata.name".to_string(), name.to_string());
        labels
    }

    fn seen_as(&self, who: &Who<'a>, family: IpFamily) -> Seen<'a> {
        match who {
            Who::Ip(ip) => Seen {
                pod: None,
                ip: Some(*ip),
            },
            // §11: a hostNetwork pod appears as its node's address; selectors never see it.
            Who::Pod(p) if p.host_network => Seen {
                pod: None,
                ip: address_of(p, family),
            },
            Who::Pod(p) => Seen {
                pod: Some(p),
                ip: address_of(p, family),
            },
        }
    }

    /// §6: one from/to entry.
    fn peer_matches(&self, policy_namespace: &str, peer: &Peer, other: &Seen) -> bool {
        match peer {
            Peer::Pods {
                namespace_selector,
                pod_selector,
            } => {
                let Some(pod) = other.pod else { return false };
                let namespace_ok = match namespace_selector {
                    // podSelector alone: the policy's own namespace.
                    None => pod.key.namespace == policy_namespace,
                    Some(s) => selector_matches(s, &self.namespace_labels(&pod.key.namespace)),
                };
                let pod_ok = match pod_selector {
                    None => true,
                    Some(s) => selector_matches(s, &pod.labels),
                };
                namespace_ok && pod_ok
            }
            // cidr minus except; pod addresses count as well as external ones.
            Peer::IpBlock(block) => match other.ip {
                None => false,
                Some(ip) => {
                    in_net(&block.cidr, &ip) && !block.except.iter().any(|e| in_net(e, &ip))
                }
            },
        }
    }

    /// §4 and §8: peers (any entry; none = every peer) AND ports (any entry; none = all).
    fn rule_matches(&self, policy_namespace: &str, rule: &Rule, other: &Seen, q: &Query) -> bool {
        let peer_ok = rule.peers.is_empty()
            || rule
                .peers
                .iter()
                .any(|p| self.peer_matches(policy_namespace, p, other));
        if !peer_ok {
            return false;
        }
        if rule.ports.is_empty() {
            return true;
        }
        rule.ports.iter().any(|pm| {
            pm.protocol == q.protocol
                && match &pm.port {
                    PortSpec::Any => true,
                    PortSpec::Range { from, to } => *from <= q.port && q.port <= *to,
                    // Resolved on the pod receiving the connection: the selected pod for
                    // ingress, the peer pod for egress; no pod (an IP, a hostNetwork pod):
                    // no match.
                    PortSpec::Named(name) => q.destination.is_some_and(|d| {
                        d.ports.iter().any(|cp| {
                            cp.name.as_deref() == Some(name.as_str())
                                && cp.protocol == q.protocol
                                && cp.port == q.port
                        })
                    }),
                }
        })
    }

    /// §1, §3, §5: one side of the flow, decided by `subject`'s policies.
    fn side(&self, subject: &Who, direction: Direction, other: &Seen, q: &Query) -> RefSide {
        let pod = match subject {
            Who::Ip(_) => return RefSide::External,
            Who::Pod(p) if p.host_network => return RefSide::HostNetwork,
            Who::Pod(p) => p,
        };
        let mut isolated_by = BTreeSet::new();
        let mut allowed_by = BTreeSet::new();
        let mut audited_by = BTreeSet::new();
        let mut audit_allows = false;
        for policy in self.policies {
            let selects = policy.key.namespace == pod.key.namespace
                && selector_matches(&policy.pod_selector, &pod.labels);
            let isolates = match direction {
                Direction::Ingress => policy.isolates_ingress,
                Direction::Egress => policy.isolates_egress,
            };
            if !selects || !isolates {
                continue;
            }
            let rules = match direction {
                Direction::Ingress => &policy.ingress,
                Direction::Egress => &policy.egress,
            };
            if policy.audit {
                audited_by.insert(policy.key.clone());
                audit_allows |= rules
                    .iter()
                    .any(|rule| self.rule_matches(&policy.key.namespace, rule, other, q));
                continue;
            }
            isolated_by.insert(policy.key.clone());
            for (index, rule) in rules.iter().enumerate() {
                if self.rule_matches(&policy.key.namespace, rule, other, q) {
                    allowed_by.insert((policy.key.clone(), index));
                }
            }
        }
        if isolated_by.is_empty() && !audited_by.is_empty() && !audit_allows {
            RefSide::AuditDenied { audited_by }
        } else if isolated_by.is_empty() {
            RefSide::NotIsolated
        } else {
            RefSide::Isolated {
                isolated_by,
                allowed_by,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_containment() {
        let n = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_net(&n("10.0.0.0/8"), &a("10.200.1.1")));
        assert!(!in_net(&n("10.0.0.0/8"), &a("11.0.0.1")));
        assert!(in_net(&n("0.0.0.0/0"), &a("1.2.3.4")));
        assert!(!in_net(&n("0.0.0.0/0"), &a("::1")));
        assert!(in_net(&n("::/0"), &a("fd00::1")));
        assert!(in_net(&n("fd00::/120"), &a("fd00::ff")));
        assert!(!in_net(&n("fd00::/120"), &a("fd00::100")));
        assert!(in_net(&n("10.0.0.5/32"), &a("10.0.0.5")));
        assert!(!in_net(&n("10.0.0.5/32"), &a("10.0.0.4")));
    }
}
