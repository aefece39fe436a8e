//! The validated model: what the engine consumes. Defaults are already applied
//! (protocol TCP, policyTypes, the namespace's implicit name label).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::labels::{LabelSelector, Labels, NAMESPACE_NAME_LABEL};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;
    /// The API spelling (`TCP`, `UDP`, `SCTP`); case-insensitive for command lines.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(format!(
                "unsupported protocol {s:?} (expected TCP, UDP or SCTP)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        })
    }
}

impl FromStr for IpFamily {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ipv4" | "v4" | "4" => Ok(IpFamily::V4),
            "ipv6" | "v6" | "6" => Ok(IpFamily::V6),
            _ => Err(format!("unknown IP family {s:?} (expected ipv4 or ipv6)")),
        }
    }
}

/// Policy direction, named from the point of view of the selected pod (the subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `namespace/name`, the identity of a pod or policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for Key {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Key::new(ns, name))
            }
            _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Includes the implicit `kubernetes.io/metadata.name` label.
    pub labels: Labels,
}

impl Namespace {
    pub fn new(name: impl Into<String>, mut labels: Labels) -> Self {
        let name = name.into();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        Self { name, labels }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    /// Succeeded and Failed pods have released their IP (checklist §10).
    pub fn is_terminal(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// What a pod was declared as: a Pod, or a workload stood in for by one representative pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PodSource {
    #[default]
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    ReplicationController,
    Job,
    CronJob,
}

impl PodSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSource::Pod => "Pod",
            PodSource::Deployment => "Deployment",
            PodSource::StatefulSet => "StatefulSet",
            PodSource::DaemonSet => "DaemonSet",
            PodSource::ReplicaSet => "ReplicaSet",
            PodSource::ReplicationController => "ReplicationController",
            PodSource::Job => "Job",
            PodSource::CronJob => "CronJob",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub key: Key,
    pub labels: Labels,
    /// status.podIPs (or status.podIP): zero, one, or one per family.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
    pub host_network: bool,
    pub node: Option<String>,
    pub phase: PodPhase,
    pub source: PodSource,
}

impl Pod {
    pub fn new(namespace: &str, name: &str, labels: Labels) -> Self {
        Self {
            key: Key::new(namespace, name),
            labels,
            ips: Vec::new(),
            ports: Vec::new(),
            host_network: false,
            node: None,
            phase: PodPhase::Running,
            source: PodSource::Pod,
        }
    }

    pub fn ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }

    /// The container port a named port refers to, for one protocol (checklist §8).
    pub fn resolve_named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

/// The port part of a rule's `ports` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    /// Every port of the protocol (`port` absent).
    Any,
    /// `[from, to]`, both inclusive; a single port has from == to.
    Range { from: u16, to: u16 },
    /// A named port, resolved on the destination pod.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMatch {
    pub protocol: Protocol,
    pub port: PortSpec,
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortSpec::Any => write!(f, "any/{}", self.protocol),
            PortSpec::Range { from, to } if from == to => write!(f, "{from}/{}", self.protocol),
            PortSpec::Range { from, to } => write!(f, "{from}-{to}/{}", self.protocol),
            PortSpec::Named(n) => write!(f, "{n}/{}", self.protocol),
        }
    }
}

/// An ipBlock: `cidr` minus every `except` (each a strict subset, already validated).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// One `from`/`to` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// podSelector and/or namespaceSelector. `None` = that field was absent.
    /// podSelector alone: pods of the policy's namespace (checklist §6).
    Pods {
        namespace_selector: Option<LabelSelector>,
        pod_selector: Option<LabelSelector>,
    },
    IpBlock(IpBlock),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods {
                namespace_selector,
                pod_selector,
            } => {
                let mut parts = Vec::new();
                if let Some(ns) = namespace_selector {
                    parts.push(format!("namespaceSelector {ns}"));
                }
                if let Some(pod) = pod_selector {
                    parts.push(format!("podSelector {pod}"));
                }
                f.write_str(&parts.join(" AND "))
            }
            Peer::IpBlock(b) => {
                write!(f, "ipBlock {}", b.cidr)?;
                if !b.except.is_empty() {
                    let ex: Vec<String> = b.except.iter().map(ToString::to_string).collect();
                    write!(f, " except {}", ex.join(","))?;
                }
                Ok(())
            }
        }
    }
}

/// One ingress or egress rule. Empty `peers` = every peer; empty `ports` = every port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub key: Key,
    pub pod_selector: LabelSelector,
    /// policyTypes after defaulting (checklist §2).
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Annotated `palisade.dev/mode: audit` ([`AUDIT_MODE_ANNOTATION`]): evaluated and
    /// reported, not enforced. Any other value (or none) enforces: a typo must not open
    /// what the policy closes.
    pub audit: bool,
}

/// The annotation that puts a NetworkPolicy in audit mode (value `audit`).
pub const AUDIT_MODE_ANNOTATION: &str = "palisade.dev/mode";

impl NetworkPolicy {
    pub fn isolates(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.isolates_ingress,
            Direction::Egress => self.isolates_egress,
        }
    }

    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// A validated object, ready for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    NetworkPolicy(NetworkPolicy),
}
