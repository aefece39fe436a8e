//! Verdict events: what a dataplane reports about single new connections, and how any
//! reader turns a kernel report back into a reason.
//!
//! A backend cannot carry a policy's name into the kernel (an NFLOG prefix holds 63
//! bytes, a BPF ring-buffer record what its struct holds), so it carries an
//! [`EventTag`]: a short hash of *what decided* (a rule's origin, or an endpoint's
//! default deny or audit-deny in one direction). [`ReasonIndex`] maps tags back to reasons
//! from the ruleset that was applied. The hash is stable (by definition, like [`SetId`]):
//! the same rule has the same tag in every generation, on every node, in every backend.
//!
//! Rate limiting is the kernel's job (per endpoint and direction for drops, per rule for
//! allows: the places where a backend has state of its own); a TCP client retransmits its
//! SYN, so a denied connection can be reported more than once, and [`Deduplicator`] keeps
//! one event per connection attempt (its 5-tuple, for a window).
//!
//! [`SetId`]: crate::SetId

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Action, DataplaneError, Direction, NodeRuleset, RuleOrigin};

/// What happened to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Allowed,
    Denied,
    /// Passed, but a policy in audit mode would have denied it (`palisade.dev/mode: audit`).
    AuditDenied,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::AuditDenied => "audit-denied",
        }
    }

    fn letter(self) -> char {
        match self {
            Verdict::Allowed => 'a',
            Verdict::Denied => 'd',
            Verdict::AuditDenied => 'u',
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allowed" => Ok(Verdict::Allowed),
            "denied" => Ok(Verdict::Denied),
            "audit-denied" => Ok(Verdict::AuditDenied),
            other => Err(format!(
                "unknown verdict {other:?}: expected allowed, denied or audit-denied"
            )),
        }
    }
}

/// What a backend writes into the kernel next to a logging rule: the verdict and a 48-bit
/// hash of what decided. Rendered as `pal:<letter>:<12 hex digits>` (an NFLOG prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTag {
    pub verdict: Verdict,
    pub hash: u64,
}

fn hash48(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    digest[..6]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

impl EventTag {
    /// A new connection a NetworkPolicy rule allowed.
    pub fn allowed(origin: &RuleOrigin) -> EventTag {
        EventTag {
            verdict: Verdict::Allowed,
            hash: hash48(&format!("allow {origin}")),
        }
    }

    /// A default-deny drop of `endpoint` in `direction`.
    pub fn denied(endpoint: &str, direction: Direction) -> EventTag {
        EventTag {
            verdict: Verdict::Denied,
            hash: hash48(&format!("deny {endpoint} {}", direction.as_str())),
        }
    }

    /// A connection the audited policies isolating `endpoint` in `direction` would deny.
    pub fn audit_denied(endpoint: &str, direction: Direction) -> EventTag {
        EventTag {
            verdict: Verdict::AuditDenied,
            hash: hash48(&format!("audit {endpoint} {}", direction.as_str())),
        }
    }
}

impl fmt::Display for EventTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pal:{}:{:012x}", self.verdict.letter(), self.hash)
    }
}

impl FromStr for EventTag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("not a Palisade event tag: {s:?}");
        let rest = s
            .trim_end_matches(['\0', ' '])
            .strip_prefix("pal:")
            .ok_or_else(bad)?;
        let (letter, hex) = rest.split_once(':').ok_or_else(bad)?;
        let verdict = match letter {
            "a" => Verdict::Allowed,
            "d" => Verdict::Denied,
            "u" => Verdict::AuditDenied,
            _ => return Err(bad()),
        };
        if hex.len() != 12 {
            return Err(bad());
        }
        let hash = u64::from_str_radix(hex, 16).map_err(|_| bad())?;
        Ok(EventTag { verdict, hash })
    }
}

/// Why a connection got its verdict, as the ruleset says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reason {
    /// The endpoint (`namespace/pod`) whose direction decided, for drops and audit-drops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub direction: Direction,
    /// Allowed: the policy rule (`namespace/name`, direction and index) that allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleOrigin>,
    /// Denied: the policies isolating the endpoint (none of whose rules allow the flow).
    /// Audit-denied: the policies in audit mode that would.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub policies: Vec<String>,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.rule, &self.endpoint) {
            (Some(rule), _) => write!(f, "allowed by {rule}"),
            (None, Some(ep)) => write!(
                f,
                "{ep} is isolated for {} by {}; no rule of theirs allows this peer and port",
                self.direction.as_str(),
                self.policies.join(", ")
            ),
            (None, None) => write!(f, "{}", self.direction.as_str()),
        }
    }
}

/// Tags back to reasons, for the rulesets a node applied. Tags are stable, so an index of
/// the newest ruleset still resolves events of older generations for what both hold; the
/// reader keeps what older rulesets named too ([`ReasonIndex::merge`]), bounded by the
/// number of distinct rules and endpoints ever seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReasonIndex {
    reasons: HashMap<EventTag, Reason>,
}

impl ReasonIndex {
    pub fn of(ruleset: &NodeRuleset) -> ReasonIndex {
        let mut reasons = HashMap::new();
        for ep in ruleset.endpoints.values() {
            for d in Direction::BOTH {
                let rules = ep.direction(d);
                if rules.isolated {
                    reasons.insert(
                        EventTag::denied(&ep.name, d),
                        Reason {
                            endpoint: Some(ep.name.clone()),
                            direction: d,
                            rule: None,
                            policies: rules.isolated_by.clone(),
                        },
                    );
                }
                if let Some(audit) = &rules.audit {
                    reasons.insert(
                        EventTag::audit_denied(&ep.name, d),
                        Reason {
                            endpoint: Some(ep.name.clone()),
                            direction: d,
                            rule: None,
                            policies: audit.isolated_by.clone(),
                        },
                    );
                }
                // Rules of an audit tier allow too (what they match passes silently), and
                // so do the admin and baseline tiers' allowing rules.
                let audit_rules = rules.audit.iter().flat_map(|a| &a.rules);
                let allowing = rules
                    .rules
                    .iter()
                    .chain(audit_rules)
                    .map(|r| &r.origin)
                    .chain(
                        rules
                            .admin
                            .iter()
                            .filter(|r| r.action == Action::Allow)
                            .map(|r| &r.origin),
                    )
                    .chain(
                        rules
                            .baseline
                            .iter()
                            .filter(|r| r.action != Action::Deny)
                            .map(|r| &r.origin),
                    );
                for origin in allowing {
                    reasons.insert(
                        EventTag::allowed(origin),
                        Reason {
                            endpoint: None,
                            direction: d,
                            rule: Some(origin.clone()),
                            policies: vec![origin.policy()],
                        },
                    );
                }
            }
        }
        ReasonIndex { reasons }
    }

    /// Adds what `newer` names, replacing older reasons of the same tags.
    pub fn merge(&mut self, newer: ReasonIndex) {
        self.reasons.extend(newer.reasons);
    }

    pub fn get(&self, tag: &EventTag) -> Option<&Reason> {
        self.reasons.get(tag)
    }

    pub fn len(&self) -> usize {
        self.reasons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// The packet of an event, as the kernel saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PacketSummary {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1/58 ICMP...).
    pub protocol: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
}

impl PacketSummary {
    /// Reads addresses, protocol and ports from an IPv4 or IPv6 packet (as NFLOG copies
    /// it). IPv6 extension headers are not walked: their ports stay unknown.
    pub fn parse(packet: &[u8]) -> Option<PacketSummary> {
        let version = packet.first()? >> 4;
        let (src, dst, protocol, l4) = match version {
            4 => {
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
                let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
                (
                    IpAddr::from(src),
                    IpAddr::from(dst),
                    *packet.get(9)?,
                    packet.get(ihl..),
                )
            }
            6 => {
                let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
                let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
                (
                    IpAddr::from(src),
                    IpAddr::from(dst),
                    *packet.get(6)?,
                    packet.get(40..),
                )
            }
            _ => return None,
        };
        let ports = match (protocol, l4) {
            (6 | 17 | 132, Some(l4)) if l4.len() >= 4 => Some((
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )),
            _ => None,
        };
        Some(PacketSummary {
            src,
            dst,
            protocol,
            src_port: ports.map(|p| p.0),
            dst_port: ports.map(|p| p.1),
        })
    }

    pub fn protocol_name(&self) -> String {
        match self.protocol {
            1 => "ICMP".into(),
            6 => "TCP".into(),
            17 => "UDP".into(),
            58 => "ICMPv6".into(),
            132 => "SCTP".into(),
            n => format!("proto-{n}"),
        }
    }
}

/// One report from the kernel: which logging rule saw which packet, and when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub tag: EventTag,
    pub packet: PacketSummary,
    pub received: Instant,
}

/// Where a backend's kernel reports arrive (an NFLOG group, a BPF ring buffer).
pub trait EventSource: Send {
    /// Waits up to `timeout` for reports; returns those that arrived (maybe none).
    fn recv(&mut self, timeout: Duration) -> Result<Vec<KernelEvent>, DataplaneError>;
    /// Reports lost on the way, as far as the source can tell (NFLOG: the times the socket
    /// buffer overflowed, each losing one or more; a BPF ring buffer: reports it had no room
    /// for), and records it could not read. Only grows.
    fn lost(&self) -> u64 {
        0
    }
}

/// What a backend logs, and how much: part of each backend's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventConfig {
    /// Also report allowed new connections (always: denied and audit-denied).
    pub log_allowed: bool,
    /// Kernel rate limit: reports per second per endpoint and direction (per rule for
    /// allows), after a burst of `burst`.
    pub rate_per_second: u32,
    pub burst: u32,
    /// The NFLOG group of backends that log through netfilter.
    pub nflog_group: u16,
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            log_allowed: false,
            rate_per_second: 10,
            burst: 20,
            nflog_group: 7170,
        }
    }
}

/// One verdict event as Palisade reports it (a JSON line in the agent's log and stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerdictEvent {
    /// RFC 3339 time the agent read the report.
    pub time: String,
    pub node: String,
    pub verdict: Verdict,
    pub direction: Direction,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`...
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The pods at either end, when the agent knows them (`namespace/name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<String>,
    /// `None` when the tag is unknown to every ruleset this reader saw (never expected).
    pub reason: Option<Reason>,
    /// The raw tag, for debugging a backend.
    pub tag: String,
    /// Reports of the same connection attempt folded into this event (retransmissions).
    pub packets: u32,
}

/// Keeps one event per connection attempt: the first report of a 5-tuple and verdict tag;
/// later ones within `window` are folded into it (counted, not reported).
#[derive(Debug)]
pub struct Deduplicator {
    window: Duration,
    seen: BTreeMap<(EventTag, PacketSummary), Instant>,
}

impl Deduplicator {
    pub fn new(window: Duration) -> Deduplicator {
        Deduplicator {
            window,
            seen: BTreeMap::new(),
        }
    }

    /// True when `event` is the first of its connection attempt within the window.
    pub fn first(&mut self, event: &KernelEvent) -> bool {
        let now = event.received;
        if self.seen.len() > 4096 {
            self.seen
                .retain(|_, t| now.saturating_duration_since(*t) < self.window);
        }
        let key = (event.tag, event.packet);
        match self.seen.get(&key) {
            Some(t) if now.saturating_duration_since(*t) < self.window => false,
            _ => {
                self.seen.insert(key, now);
                true
            }
        }
    }
}

impl PartialOrd for PacketSummary {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PacketSummary {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (
            self.src,
            self.dst,
            self.protocol,
            self.src_port,
            self.dst_port,
        )
            .cmp(&(
                other.src,
                other.dst,
                other.protocol,
                other.src_port,
                other.dst_port,
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::endpoint_with_ingress;
    use crate::{AllowRule, PeerMatch, PortMatch};

    #[test]
    fn tags_round_trip_and_fit_an_nflog_prefix() {
        let origin = RuleOrigin {
            policy_namespace: "a-namespace-with-a-long-name".into(),
            policy_name: "a-policy-with-an-even-longer-name".into(),
            direction: Direction::Ingress,
            rule_index: 12,
        };
        for tag in [
            EventTag::allowed(&origin),
            EventTag::denied("ns/a", Direction::Egress),
            EventTag::audit_denied("ns/a", Direction::Egress),
        ] {
            let text = tag.to_string();
            assert!(text.len() < 64, "{text}");
            assert_eq!(text.parse::<EventTag>(), Ok(tag));
        }
        assert_ne!(
            EventTag::denied("ns/a", Direction::Egress),
            EventTag::denied("ns/a", Direction::Ingress)
        );
        assert!("pal:x:000000000000".parse::<EventTag>().is_err());
        assert!("kube-proxy".parse::<EventTag>().is_err());
    }

    #[test]
    fn reasons_name_the_isolating_policies_and_the_allowing_rule() {
        let origin = RuleOrigin {
            policy_namespace: "ns".into(),
            policy_name: "p".into(),
            direction: Direction::Ingress,
            rule_index: 0,
        };
        let ep = endpoint_with_ingress(vec![AllowRule {
            peers: PeerMatch::Any,
            ports: PortMatch::Any,
            origin: origin.clone(),
        }]);
        let mut rs = NodeRuleset::default();
        rs.endpoints.insert(ep.name.clone(), ep);
        let index = ReasonIndex::of(&rs);
        let deny = index
            .get(&EventTag::denied("ns/a", Direction::Ingress))
            .expect("isolated ingress has a default deny");
        assert_eq!(deny.policies, vec!["ns/p".to_string()]);
        assert_eq!(deny.endpoint.as_deref(), Some("ns/a"));
        assert!(
            index
                .get(&EventTag::denied("ns/a", Direction::Egress))
                .is_none(),
            "egress is open: nothing drops there"
        );
        let allow = index.get(&EventTag::allowed(&origin)).unwrap();
        assert_eq!(allow.rule.as_ref(), Some(&origin));
    }

    #[test]
    fn packets_parse_in_both_families() {
        let mut v4 = vec![0u8; 24];
        v4[0] = 0x45;
        v4[9] = 6;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        v4[16..20].copy_from_slice(&[10, 0, 0, 2]);
        v4[20..24].copy_from_slice(&[0x9c, 0x40, 0, 80]);
        let p = PacketSummary::parse(&v4).unwrap();
        assert_eq!(p.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((p.src_port, p.dst_port), (Some(40000), Some(80)));
        let mut v6 = vec![0u8; 44];
        v6[0] = 0x60;
        v6[6] = 17;
        v6[23] = 1;
        v6[39] = 2;
        v6[40..44].copy_from_slice(&[0x27, 0x10, 0, 53]);
        let p = PacketSummary::parse(&v6).unwrap();
        assert_eq!(p.dst, "::2".parse::<IpAddr>().unwrap());
        assert_eq!((p.protocol, p.dst_port), (17, Some(53)));
        assert_eq!(PacketSummary::parse(&[0x45, 0]), None);
    }

    #[test]
    fn retransmissions_fold_into_one_event() {
        let t0 = Instant::now();
        let packet = PacketSummary {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            protocol: 6,
            src_port: Some(40000),
            dst_port: Some(80),
        };
        let event = |at: Duration, packet: PacketSummary| KernelEvent {
            tag: EventTag::denied("ns/a", Direction::Ingress),
            packet,
            received: t0 + at,
        };
        let mut d = Deduplicator::new(Duration::from_secs(10));
        assert!(d.first(&event(Duration::ZERO, packet)));
        assert!(!d.first(&event(Duration::from_secs(1), packet)));
        let other = PacketSummary {
            src_port: Some(40001),
            ..packet
        };
        assert!(d.first(&event(Duration::from_secs(1), other)));
        assert!(d.first(&event(Duration::from_secs(11), packet)));
    }
}
