//! The matching rules of the checklist (§4-§8, §11) in one place, shared by verdicts, the
//! IR compiler, connectivity and lint, so they can never disagree.

use std::net::IpAddr;

use palisade_model::{
    IpFamily, LabelSelector, Labels, NetworkPolicy, Peer, Pod, PortMatch, PortSpec, Protocol, Rule,
};

use crate::ports::PortRanges;

/// The other end of a connection, as a rule sees it.
#[derive(Debug, Clone, Copy)]
pub enum PeerView<'a> {
    /// A pod (not hostNetwork), with the labels of its namespace.
    Pod {
        pod: &'a Pod,
        namespace_labels: &'a Labels,
        family: Option<IpFamily>,
    },
    /// An address outside the pod network (or a hostNetwork pod, which is its node's IP).
    Ip(IpAddr),
    /// A hostNetwork pod with no address of the flow's family: selectors never see it
    /// (§11) and no ipBlock holds it, so only rules without peers match it.
    Unaddressed,
}

impl PeerView<'_> {
    /// The address the peer uses in this flow, if known.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            PeerView::Pod { pod, family, .. } => match family {
                Some(f) => pod.ip(*f),
                None => pod.ips.first().copied(),
            },
            PeerView::Ip(ip) => Some(*ip),
            PeerView::Unaddressed => None,
        }
    }

    pub fn pod(&self) -> Option<&Pod> {
        match self {
            PeerView::Pod { pod, .. } => Some(pod),
            PeerView::Ip(_) | PeerView::Unaddressed => None,
        }
    }
}

/// §6: one `from`/`to` entry against one peer. `policy_namespace` scopes a podSelector
/// that stands alone.
pub fn peer_matches(policy_namespace: &str, peer: &Peer, view: &PeerView<'_>) -> bool {
    match peer {
        Peer::Pods {
            namespace_selector,
            pod_selector,
        } => match view {
            PeerView::Pod {
                pod,
                namespace_labels,
                ..
            } => pods_peer_matches(
                policy_namespace,
                namespace_selector.as_ref(),
                pod_selector.as_ref(),
                &pod.key.namespace,
                namespace_labels,
                &pod.labels,
            ),
            PeerView::Ip(_) | PeerView::Unaddressed => false,
        },
        // §6: ipBlock matches pod IPs as well as external IPs.
        Peer::IpBlock(block) => view.ip().is_some_and(|ip| block.contains(&ip)),
    }
}

pub fn pods_peer_matches(
    policy_namespace: &str,
    namespace_selector: Option<&LabelSelector>,
    pod_selector: Option<&LabelSelector>,
    pod_namespace: &str,
    namespace_labels: &Labels,
    pod_labels: &Labels,
) -> bool {
    let namespace_ok = match namespace_selector {
        None => pod_namespace == policy_namespace,
        Some(s) => s.matches(namespace_labels),
    };
    namespace_ok && pod_selector.is_none_or(|s| s.matches(pod_labels))
}

/// §4: empty `from`/`to` matches every peer.
pub fn rule_peers_match(policy_namespace: &str, rule: &Rule, view: &PeerView<'_>) -> bool {
    rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(policy_namespace, p, view))
}

/// §8: the ports one `ports` entry opens, with named ports resolved on `destination` (the
/// pod that receives the connection). A named port never matches a non-pod destination.
pub fn port_match_ranges(pm: &PortMatch, destination: Option<&Pod>) -> PortRanges {
    match &pm.port {
        PortSpec::Any => PortRanges::single(pm.protocol, 0, 65535),
        PortSpec::Range { from, to } => PortRanges::single(pm.protocol, *from, *to),
        PortSpec::Named(name) => destination
            .and_then(|pod| pod.resolve_named_port(name, pm.protocol))
            .map_or_else(PortRanges::none, |p| PortRanges::single(pm.protocol, p, p)),
    }
}

/// §4: the ports a rule opens towards `destination`; empty `ports` opens everything.
pub fn rule_port_ranges(rule: &Rule, destination: Option<&Pod>) -> PortRanges {
    if rule.ports.is_empty() {
        return PortRanges::all();
    }
    let mut out = PortRanges::none();
    for pm in &rule.ports {
        out.union_with(&port_match_ranges(pm, destination));
    }
    out
}

pub fn rule_allows_port(
    rule: &Rule,
    destination: Option<&Pod>,
    protocol: Protocol,
    port: u16,
) -> bool {
    rule.ports.is_empty()
        || rule.ports.iter().any(|pm| {
            pm.protocol == protocol && port_match_ranges(pm, destination).contains(protocol, port)
        })
}

/// §1: does this policy select the pod (same namespace, podSelector matches)?
pub fn policy_selects(policy: &NetworkPolicy, pod: &Pod) -> bool {
    // §11: hostNetwork pods cannot be isolated.
    policy.key.namespace == pod.key.namespace
        && !pod.host_network
        && policy.pod_selector.matches(&pod.labels)
}
