//! Findings about policies that are valid but probably not what their author meant.

use std::fmt;

use palisade_model::{Direction, Key, NetworkPolicy, Peer, PortMatch, PortSpec, Rule};

use crate::matching::{PeerView, peer_matches};
use crate::state::ClusterState;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LintKind {
    SelectsNoPod,
    PeerMatchesNothing,
    NamedPortUnresolved,
    ShadowedRule,
}

impl LintKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            LintKind::SelectsNoPod => "selects-no-pod",
            LintKind::PeerMatchesNothing => "peer-matches-nothing",
            LintKind::NamedPortUnresolved => "named-port-unresolved",
            LintKind::ShadowedRule => "shadowed-rule",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub policy: Key,
    /// Field path inside the policy, e.g. `spec.ingress[0].from[1]`.
    pub field: String,
    pub kind: LintKind,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NetworkPolicy {}: {}: {} [{}]",
            self.policy,
            self.field,
            self.message,
            self.kind.as_str()
        )
    }
}

fn peer_field(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

/// Does some pod of the cluster match this selector peer?
fn peer_matches_any_pod(state: &ClusterState, policy_ns: &str, peer: &Peer) -> bool {
    state
        .pods()
        .into_iter()
        .filter(|p| !p.host_network)
        .any(|pod| {
            let labels = state.namespace_labels(&pod.key.namespace);
            peer_matches(
                policy_ns,
                peer,
                &PeerView::Pod {
                    pod,
                    namespace_labels: &labels,
                    family: None,
                },
            )
        })
}

/// `a` covers `b`: every (protocol, port) that `b` opens, `a` opens too.
fn port_covers(a: &PortMatch, b: &PortMatch) -> bool {
    a.protocol == b.protocol
        && match (&a.port, &b.port) {
            (PortSpec::Any, _) => true,
            (PortSpec::Range { from, to }, PortSpec::Range { from: f2, to: t2 }) => {
                from <= f2 && t2 <= to
            }
            (PortSpec::Named(x), PortSpec::Named(y)) => x == y,
            _ => false,
        }
}

/// Rule `a` allows at least everything `b` does, judged on the rules' text.
fn rule_covers(a: &Rule, b: &Rule) -> bool {
    let peers =
        a.peers.is_empty() || (!b.peers.is_empty() && b.peers.iter().all(|p| a.peers.contains(p)));
    let ports = a.ports.is_empty()
        || (!b.ports.is_empty()
            && b.ports
                .iter()
                .all(|p| a.ports.iter().any(|q| port_covers(q, p))));
    peers && ports
}

fn lint_policy(state: &ClusterState, policy: &NetworkPolicy, out: &mut Vec<Finding>) {
    let ns = policy.key.namespace.as_str();
    let selected: Vec<_> = state.pods_selected_by(&policy.key).collect();
    let finding = |field: String, kind: LintKind, message: String| Finding {
        policy: policy.key.clone(),
        field,
        kind,
        message,
    };
    if selected.is_empty() {
        out.push(finding(
            "spec.podSelector".into(),
            LintKind::SelectsNoPod,
            format!("selects no pod (podSelector {})", policy.pod_selector),
        ));
    }
    for d in Direction::BOTH {
        let rules = policy.rules(d);
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("spec.{d}[{i}]");
            for (j, peer) in rule.peers.iter().enumerate() {
                if matches!(peer, Peer::Pods { .. }) && !peer_matches_any_pod(state, ns, peer) {
                    out.push(finding(
                        format!("{path}.{}[{j}]", peer_field(d)),
                        LintKind::PeerMatchesNothing,
                        format!("peer {peer} matches no pod"),
                    ));
                }
            }
            for (j, pm) in rule.ports.iter().enumerate() {
                let PortSpec::Named(name) = &pm.port else {
                    continue;
                };
                // §8: ingress resolves on the selected pods, egress on the peer pods.
                let resolves = match d {
                    Direction::Ingress => selected
                        .iter()
                        .any(|p| p.resolve_named_port(name, pm.protocol).is_some()),
                    Direction::Egress => state.pods().into_iter().any(|pod| {
                        let labels = state.namespace_labels(&pod.key.namespace);
                        let view = PeerView::Pod {
                            pod,
                            namespace_labels: &labels,
                            family: None,
                        };
                        pod.resolve_named_port(name, pm.protocol).is_some()
                            && !pod.host_network
                            && (rule.peers.is_empty()
                                || rule.peers.iter().any(|p| peer_matches(ns, p, &view)))
                    }),
                };
                if !resolves {
                    let whose = match d {
                        Direction::Ingress => "the pods this policy selects",
                        Direction::Egress => "the peer pods of this rule",
                    };
                    out.push(finding(
                        format!("{path}.ports[{j}].port"),
                        LintKind::NamedPortUnresolved,
                        format!(
                            "named port {name}/{} is declared by none of {whose}",
                            pm.protocol
                        ),
                    ));
                }
            }
            if let Some((k, _)) = rules.iter().enumerate().find(|(k, other)| {
                *k != i && rule_covers(other, rule) && (!rule_covers(rule, other) || *k < i)
            }) {
                out.push(finding(
                    path.clone(),
                    LintKind::ShadowedRule,
                    format!(
                        "is shadowed by the broader rule spec.{d}[{k}]: it allows nothing more"
                    ),
                ));
            }
        }
    }
}

/// Every finding, sorted by policy and field.
pub fn lint(state: &ClusterState) -> Vec<Finding> {
    let mut out = Vec::new();
    for policy in state.policies() {
        lint_policy(state, policy, &mut out);
    }
    out.sort();
    out
}
