//! Verdicts with their reasons: `explain(flow)` says which policies isolate each side and
//! which policy rule allowed it, or that none did (§1, §3, §5).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use palisade_model::{Direction, IpFamily, Key, Labels, Pod, Protocol};

use crate::matching::{PeerView, rule_allows_port, rule_peers_match};
use crate::state::ClusterState;

/// One end of a flow: a pod, or a bare IP (external traffic, matched by ipBlocks).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Pod(Key),
    Ip(IpAddr),
}

impl FromStr for Endpoint {
    type Err = String;
    /// `NAMESPACE/POD` or an IP address.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Endpoint::Ip(ip));
        }
        s.parse::<Key>()
            .map(Endpoint::Pod)
            .map_err(|_| format!("expected NAMESPACE/POD or an IP address, got {s:?}"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Pod(k) => write!(f, "{k}"),
            Endpoint::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A connection attempt: `src` opens a connection to `dst` on `protocol`/`port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub protocol: Protocol,
    pub port: u16,
    /// Which addresses of dual-stack pods the flow uses; derived when absent.
    pub family: Option<IpFamily>,
}

/// A rule that allowed one side: policy and index into its ingress/egress list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleRef {
    pub policy: Key,
    pub direction: Direction,
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// The verdict of one side of a flow (the source's egress or the destination's ingress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideVerdict {
    /// The endpoint is not a pod of the cluster: no policy applies here.
    External,
    /// A hostNetwork pod: it cannot be isolated (§11).
    HostNetwork,
    /// A pod's traffic to itself: it never leaves the pod's network namespace, so no
    /// enforcer (ours or any CNI's) sees it; allowed whatever the policies.
    SelfTraffic,
    /// No policy selecting the pod isolates this direction: everything is allowed (§1).
    NotIsolated,
    /// No enforced policy isolates this direction, and these policies in audit mode
    /// (`palisade.dev/mode: audit`) would deny the flow: allowed, and reported.
    AuditDenied { audited_by: Vec<Key> },
    /// Isolated by these policies, and allowed by these rules (all of them, sorted).
    Allowed {
        isolated_by: Vec<Key>,
        allowed_by: Vec<RuleRef>,
    },
    /// Isolated by these policies, and no rule of theirs allows the flow.
    Denied { isolated_by: Vec<Key> },
}

impl SideVerdict {
    pub fn allows(&self) -> bool {
        !matches!(self, SideVerdict::Denied { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub flow: Flow,
    pub family: IpFamily,
    pub egress: SideVerdict,
    pub ingress: SideVerdict,
}

impl Explanation {
    /// §3: allowed only if both sides allow.
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExplainError {
    UnknownPod(Key),
    FamilyMismatch { src: IpAddr, dst: IpAddr },
}

impl fmt::Display for ExplainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExplainError::UnknownPod(k) => {
                write!(f, "no pod or workload {k} in the loaded objects")
            }
            ExplainError::FamilyMismatch { src, dst } => {
                write!(f, "{src} and {dst} are of different IP families")
            }
        }
    }
}

impl std::error::Error for ExplainError {}

/// A flow endpoint resolved against the state.
#[derive(Debug, Clone, Copy)]
enum Resolved<'a> {
    Pod(&'a Pod),
    Ip(IpAddr),
}

impl ClusterState {
    fn resolve<'a>(&'a self, e: &Endpoint) -> Result<Resolved<'a>, ExplainError> {
        match e {
            Endpoint::Pod(k) => self
                .pod(k)
                .map(Resolved::Pod)
                .ok_or_else(|| ExplainError::UnknownPod(k.clone())),
            Endpoint::Ip(ip) => Ok(Resolved::Ip(*ip)),
        }
    }

    fn flow_family(flow: &Flow, src: Resolved, dst: Resolved) -> Result<IpFamily, ExplainError> {
        if let (Resolved::Ip(a), Resolved::Ip(b)) = (src, dst)
            && IpFamily::of(&a) != IpFamily::of(&b)
        {
            return Err(ExplainError::FamilyMismatch { src: a, dst: b });
        }
        let from_ips = [src, dst].into_iter().find_map(|r| match r {
            Resolved::Ip(ip) => Some(IpFamily::of(&ip)),
            Resolved::Pod(_) => None,
        });
        let from_pods = [src, dst].into_iter().find_map(|r| match r {
            Resolved::Pod(p) => p.ips.first().map(IpFamily::of),
            Resolved::Ip(_) => None,
        });
        Ok(flow
            .family
            .or(from_ips)
            .or(from_pods)
            .unwrap_or(IpFamily::V4))
    }

    fn peer_view<'a>(
        &self,
        r: Resolved<'a>,
        family: IpFamily,
        namespace_labels: &'a Labels,
    ) -> PeerView<'a> {
        match r {
            // §11: a hostNetwork pod is its node's IP; selectors never match it, not even
            // when it has no address of this family (nor do its named ports resolve).
            Resolved::Pod(p) if p.host_network => match p.ip(family) {
                Some(ip) => PeerView::Ip(ip),
                None => PeerView::Unaddressed,
            },
            Resolved::Pod(p) => PeerView::Pod {
                pod: p,
                namespace_labels,
                family: Some(family),
            },
            Resolved::Ip(ip) => PeerView::Ip(ip),
        }
    }

    /// One side: `subject` is the pod whose policies decide, `peer` the other end,
    /// `destination` the pod receiving the connection (for named ports, §8).
    fn side(
        &self,
        subject: Resolved,
        direction: Direction,
        peer: &PeerView<'_>,
        destination: Option<&Pod>,
        flow: &Flow,
    ) -> SideVerdict {
        let pod = match subject {
            Resolved::Ip(_) => return SideVerdict::External,
            Resolved::Pod(p) if p.host_network => return SideVerdict::HostNetwork,
            Resolved::Pod(p) => p,
        };
        let mut isolated_by = Vec::new();
        let mut allowed_by = Vec::new();
        let mut audited_by = Vec::new();
        let mut audit_allows = false;
        for policy in self
            .policies_selecting(&pod.key)
            .filter(|p| p.isolates(direction))
        {
            let allows = policy
                .rules(direction)
                .iter()
                .enumerate()
                .filter(|(_, rule)| {
                    rule_peers_match(&policy.key.namespace, rule, peer)
                        && rule_allows_port(rule, destination, flow.protocol, flow.port)
                })
                .map(|(index, _)| RuleRef {
                    policy: policy.key.clone(),
                    direction,
                    index,
                });
            if policy.audit {
                audited_by.push(policy.key.clone());
                audit_allows |= allows.count() > 0;
            } else {
                isolated_by.push(policy.key.clone());
                allowed_by.extend(allows);
            }
        }
        match (isolated_by.is_empty(), allowed_by.is_empty()) {
            (true, _) if !audited_by.is_empty() && !audit_allows => {
                SideVerdict::AuditDenied { audited_by }
            }
            (true, _) => SideVerdict::NotIsolated,
            (false, false) => SideVerdict::Allowed {
                isolated_by,
                allowed_by,
            },
            (false, true) => SideVerdict::Denied { isolated_by },
        }
    }

    /// The endpoint an address stands for: the pod holding it (a packet from a pod's
    /// address is that pod's, §6), or the bare address. `explain` takes `Endpoint::Ip` as
    /// external, so callers resolve user-given addresses through this first.
    pub fn endpoint_for_ip(&self, ip: IpAddr) -> Endpoint {
        match self.ip_owner(&ip).and_then(|k| self.pod(k)) {
            Some(pod) if pod.ips.contains(&ip) => Endpoint::Pod(pod.key.clone()),
            _ => Endpoint::Ip(ip),
        }
    }

    /// The verdict for `flow` and why.
    pub fn explain(&self, flow: &Flow) -> Result<Explanation, ExplainError> {
        let src = self.resolve(&flow.src)?;
        let dst = self.resolve(&flow.dst)?;
        let family = Self::flow_family(flow, src, dst)?;
        if let (Resolved::Pod(a), Resolved::Pod(b)) = (src, dst)
            && a.key == b.key
        {
            return Ok(Explanation {
                flow: flow.clone(),
                family,
                egress: SideVerdict::SelfTraffic,
                ingress: SideVerdict::SelfTraffic,
            });
        }
        let src_ns = match src {
            Resolved::Pod(p) => self.namespace_labels(&p.key.namespace).into_owned(),
            Resolved::Ip(_) => Labels::new(),
        };
        let dst_ns = match dst {
            Resolved::Pod(p) => self.namespace_labels(&p.key.namespace).into_owned(),
            Resolved::Ip(_) => Labels::new(),
        };
        let src_view = self.peer_view(src, family, &src_ns);
        let dst_view = self.peer_view(dst, family, &dst_ns);
        let dst_pod = match dst_view {
            PeerView::Pod { pod, .. } => Some(pod),
            PeerView::Ip(_) | PeerView::Unaddressed => None,
        };
        let egress = self.side(src, Direction::Egress, &dst_view, dst_pod, flow);
        let ingress = self.side(dst, Direction::Ingress, &src_view, dst_pod, flow);
        Ok(Explanation {
            flow: flow.clone(),
            family,
            egress,
            ingress,
        })
    }

    pub fn allows(&self, flow: &Flow) -> Result<bool, ExplainError> {
        self.explain(flow).map(|e| e.allowed())
    }
}

/// Why a pod's traffic to itself is allowed (`explain`, docs).
pub const SELF_TRAFFIC_REASON: &str =
    "a pod's traffic to itself never leaves its network namespace and is not filtered";

fn keys(keys: &[Key]) -> String {
    keys.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Explanation {
    /// The reasoning chain in plain words.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = &self.flow;
        writeln!(
            f,
            "{} -> {} {}/{} ({}): {}",
            flow.src,
            flow.dst,
            flow.port,
            flow.protocol,
            self.family,
            if self.allowed() { "ALLOWED" } else { "DENIED" }
        )?;
        for (label, policy_type, who, side) in [
            ("egress ", "Egress", &flow.src, &self.egress),
            ("ingress", "Ingress", &flow.dst, &self.ingress),
        ] {
            let line = match side {
                SideVerdict::External => {
                    format!("{who} is not a pod of the cluster; no policy applies")
                }
                SideVerdict::HostNetwork => {
                    format!("{who} uses the host network and cannot be isolated")
                }
                SideVerdict::SelfTraffic => SELF_TRAFFIC_REASON.to_string(),
                SideVerdict::NotIsolated => format!(
                    "{who} is not isolated for {}: no policy selecting it has {policy_type} \
                     in policyTypes, so all is allowed",
                    label.trim()
                ),
                SideVerdict::AuditDenied { audited_by } => format!(
                    "{who} is not isolated for {} by any enforced policy, so it is allowed; \
                     {} (audit mode) would deny it: AUDIT-DENIED",
                    label.trim(),
                    keys(audited_by)
                ),
                SideVerdict::Allowed {
                    isolated_by,
                    allowed_by,
                } => format!(
                    "{who} is isolated by {}; allowed by {}",
                    keys(isolated_by),
                    allowed_by
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                SideVerdict::Denied { isolated_by } => format!(
                    "{who} is isolated by {}; no rule of these policies allows this peer and port, so it is denied",
                    keys(isolated_by)
                ),
            };
            writeln!(f, "  {label}: {line}")?;
        }
        Ok(())
    }
}
