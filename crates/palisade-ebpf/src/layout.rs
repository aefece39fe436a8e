//! The byte layout of every map key and value, mirroring the structs of
//! `bpf/palisade.bpf.c` (native byte order, explicit padding). Keys are built here with
//! generation 0; [`with_gen`] stamps the generation in when an entry is written.

use std::net::IpAddr;

/// The maps the program reads, by their names in the object (and their pin file names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapKind {
    Config,
    Endpoints,
    Peers,
    Ports,
    Conns,
    Local,
    AllowCounts,
    DenyCounts,
    AuditCounts,
    /// RuleOrigin id -> the EventTag hash of an allow by it.
    OriginTags,
    EventConfig,
    /// Token buckets of the event rate limit.
    Limits,
    /// The ring buffer of verdict events.
    Events,
    /// Reports the ring buffer had no room for.
    EventsLost,
}

impl MapKind {
    pub const ALL: [MapKind; 14] = [
        MapKind::Config,
        MapKind::Endpoints,
        MapKind::Peers,
        MapKind::Ports,
        MapKind::Conns,
        MapKind::Local,
        MapKind::AllowCounts,
        MapKind::DenyCounts,
        MapKind::AuditCounts,
        MapKind::OriginTags,
        MapKind::EventConfig,
        MapKind::Limits,
        MapKind::Events,
        MapKind::EventsLost,
    ];
    /// The maps whose keys carry a generation: the policy.
    pub const POLICY: [MapKind; 3] = [MapKind::Endpoints, MapKind::Peers, MapKind::Ports];

    pub fn name(self) -> &'static str {
        match self {
            MapKind::Config => "pal_config",
            MapKind::Endpoints => "pal_endpoints",
            MapKind::Peers => "pal_peers",
            MapKind::Ports => "pal_ports",
            MapKind::Conns => "pal_conns",
            MapKind::Local => "pal_local",
            MapKind::AllowCounts => "pal_allow_cnt",
            MapKind::DenyCounts => "pal_deny_cnt",
            MapKind::AuditCounts => "pal_audit_cnt",
            MapKind::OriginTags => "pal_origin_tags",
            MapKind::EventConfig => "pal_event_cfg",
            MapKind::Limits => "pal_limits",
            MapKind::Events => "pal_events",
            MapKind::EventsLost => "pal_events_lost",
        }
    }

    /// Offset of the generation byte in a key of this map.
    pub fn gen_offset(self) -> Option<usize> {
        match self {
            MapKind::Endpoints => Some(0),
            MapKind::Peers | MapKind::Ports => Some(4),
            _ => None,
        }
    }
}

pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;
pub const HOOK_FROM_POD: u8 = 0;
pub const HOOK_TO_POD: u8 = 1;

pub const ACT_ALLOW: u32 = 1;
pub const ACT_DENY_RULE: u32 = 2;
pub const ACT_DEFAULT_DENY: u32 = 3;
pub const ACT_OPEN: u32 = 4;
pub const ACT_AUDIT: u32 = 5;

pub const EV_ALLOWED: u8 = 1;
pub const EV_DENIED: u8 = 2;
pub const EV_AUDIT_DENIED: u8 = 3;
pub const LIMIT_DENIED: u32 = 0;
pub const LIMIT_AUDIT: u32 = 1;
pub const LIMIT_ALLOWED: u32 = 2;

pub const FAM_V4: u8 = 4;
pub const FAM_V6: u8 = 6;

pub fn family(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { FAM_V4 } else { FAM_V6 }
}

/// An address in a 16-byte field: IPv4 in the first 4 bytes, network order.
pub fn addr16(ip: &IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

pub fn addr_from16(fam: u8, b: &[u8]) -> IpAddr {
    if fam == FAM_V4 {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        IpAddr::from(a)
    }
}

/// The key with its generation byte set.
pub fn with_gen(map: MapKind, key: &[u8], gen_: u8) -> Vec<u8> {
    let mut k = key.to_vec();
    if let Some(o) = map.gen_offset() {
        k[o] = gen_;
    }
    k
}

/// The generation of a policy key.
pub fn gen_of(map: MapKind, key: &[u8]) -> Option<u8> {
    map.gen_offset().and_then(|o| key.get(o).copied())
}

/// `struct ep_key` (20 bytes).
pub fn ep_key(ip: &IpAddr) -> Vec<u8> {
    let mut k = vec![0u8; 20];
    k[1] = family(ip);
    k[4..20].copy_from_slice(&addr16(ip));
    k
}

/// `struct ep_val` (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EpVal {
    /// Per direction ([`DIR_INGRESS`], [`DIR_EGRESS`]); 0: not filtered.
    pub class: [u32; 2],
    pub slot: u32,
    /// Per direction, the action when no rule matches: [`ACT_DEFAULT_DENY`] (isolated),
    /// [`ACT_AUDIT`] (audited policies would isolate) or [`ACT_OPEN`].
    pub miss: [u32; 2],
    /// Per direction, the event tag hash of that miss (0: none).
    pub tag: [u64; 2],
}

impl EpVal {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(&self.class[0].to_ne_bytes());
        v.extend_from_slice(&self.class[1].to_ne_bytes());
        v.extend_from_slice(&self.slot.to_ne_bytes());
        v.push(self.miss[0] as u8);
        v.push(self.miss[1] as u8);
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&self.tag[0].to_ne_bytes());
        v.extend_from_slice(&self.tag[1].to_ne_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Option<EpVal> {
        if v.len() != 32 {
            return None;
        }
        Some(EpVal {
            class: [u32_at(v, 0), u32_at(v, 4)],
            slot: u32_at(v, 8),
            miss: [u32::from(v[12]), u32::from(v[13])],
            tag: [u64_at(v, 16), u64_at(v, 24)],
        })
    }
}

pub fn u64_at(v: &[u8], o: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[o..o + 8]);
    u64::from_ne_bytes(b)
}

pub fn u32_at(v: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes([v[o], v[o + 1], v[o + 2], v[o + 3]])
}

/// `struct peer_key` (4 + 24 bytes): prefix over (gen, family, pad, class) = 64 bits, then
/// the address.
pub fn peer_key(fam: u8, class: u32, addr: &[u8; 16], plen: u8) -> Vec<u8> {
    let mut k = vec![0u8; 28];
    k[0..4].copy_from_slice(&(64 + u32::from(plen)).to_ne_bytes());
    k[5] = fam;
    k[8..12].copy_from_slice(&class.to_ne_bytes());
    k[12..28].copy_from_slice(addr);
    k
}

/// `struct port_key` (4 + 12 bytes). `proto` 0: protocols without ports (plen 0).
pub fn port_key(proto: u8, group: u32, port: u16, plen: u8) -> Vec<u8> {
    let mut k = vec![0u8; 16];
    k[0..4].copy_from_slice(&(64 + u32::from(plen)).to_ne_bytes());
    k[5] = proto;
    k[8..12].copy_from_slice(&group.to_ne_bytes());
    k[12..14].copy_from_slice(&port.to_be_bytes());
    k
}

/// `struct verdict` (8 bytes).
pub fn verdict(action: u32, origin: u32) -> Vec<u8> {
    let mut v = action.to_ne_bytes().to_vec();
    v.extend_from_slice(&origin.to_ne_bytes());
    v
}

/// `struct addr_key` (20 bytes).
pub fn addr_key(ip: &IpAddr) -> Vec<u8> {
    let mut k = vec![0u8; 20];
    k[0] = family(ip);
    k[4..20].copy_from_slice(&addr16(ip));
    k
}

/// `struct config_val` (8 bytes).
pub fn config_val(active: u8) -> Vec<u8> {
    let mut v = vec![0u8; 8];
    v[0..4].copy_from_slice(&u32::from(active).to_ne_bytes());
    v
}

/// `struct conn_key` (44 bytes).
#[allow(clippy::too_many_arguments)]
pub fn conn_key(
    ifindex: u32,
    hook: u8,
    proto: u8,
    fam: u8,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut k = vec![0u8; 44];
    k[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    k[4] = hook;
    k[5] = proto;
    k[6] = fam;
    k[8..24].copy_from_slice(saddr);
    k[24..40].copy_from_slice(daddr);
    k[40..42].copy_from_slice(&sport.to_ne_bytes());
    k[42..44].copy_from_slice(&dport.to_ne_bytes());
    k
}

/// `struct event_config` (16 bytes).
pub fn event_config(events: Option<&palisade_ir::events::EventConfig>) -> Vec<u8> {
    let (enabled, log_allowed, rate, burst) = match events {
        Some(e) => (1u32, u32::from(e.log_allowed), e.rate_per_second, e.burst),
        None => (0, 0, 0, 0),
    };
    [enabled, log_allowed, rate, burst]
        .iter()
        .flat_map(|x| x.to_ne_bytes())
        .collect()
}

/// `struct event` (48 bytes): one verdict event from the ring buffer.
pub const EVENT_SIZE: usize = 48;

/// `struct event` as the program writes it.
pub fn encode_event(
    tag: u64,
    verdict: u8,
    dir: u32,
    packet: &palisade_ir::events::PacketSummary,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(EVENT_SIZE);
    v.extend_from_slice(&tag.to_ne_bytes());
    v.push(verdict);
    v.push(family(&packet.src));
    v.push(packet.protocol);
    v.push(dir as u8);
    v.extend_from_slice(&packet.src_port.unwrap_or(0).to_ne_bytes());
    v.extend_from_slice(&packet.dst_port.unwrap_or(0).to_ne_bytes());
    v.extend_from_slice(&addr16(&packet.src));
    v.extend_from_slice(&addr16(&packet.dst));
    v
}

/// Reads a `struct event` back: its tag and packet. `None` for a record of another shape.
pub fn decode_event(
    v: &[u8],
) -> Option<(
    palisade_ir::events::EventTag,
    palisade_ir::events::PacketSummary,
)> {
    use palisade_ir::events::{EventTag, PacketSummary, Verdict};
    if v.len() < EVENT_SIZE {
        return None;
    }
    let verdict = match v[8] {
        EV_ALLOWED => Verdict::Allowed,
        EV_DENIED => Verdict::Denied,
        EV_AUDIT_DENIED => Verdict::AuditDenied,
        _ => return None,
    };
    let fam = v[9];
    if fam != FAM_V4 && fam != FAM_V6 {
        return None;
    }
    let protocol = v[10];
    let ported = matches!(protocol, 6 | 17 | 132);
    let port = |o: usize| ported.then(|| u16::from_ne_bytes([v[o], v[o + 1]]));
    Some((
        EventTag {
            verdict,
            hash: u64_at(v, 0),
        },
        PacketSummary {
            src: addr_from16(fam, &v[16..32]),
            dst: addr_from16(fam, &v[32..48]),
            protocol,
            src_port: port(12),
            dst_port: port(14),
        },
    ))
}

/// An inclusive port range as the fewest prefixes `(first port, prefix length)`.
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut a = u32::from(first);
    let b = u32::from(last);
    while a <= b {
        let mut size = if a == 0 {
            1 << 16
        } else {
            1u32 << a.trailing_zeros()
        };
        while a + size - 1 > b {
            size >>= 1;
        }
        out.push((a as u16, 16 - size.trailing_zeros() as u8));
        a += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_split_into_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_prefixes(8000, 8003), vec![(8000, 14)]);
        assert_eq!(port_prefixes(79, 81), vec![(79, 16), (80, 15)], "79, 80-81");
        for (a, b) in [(1u16, 1000u16), (1024, 65535), (3, 17), (65535, 65535)] {
            let p = port_prefixes(a, b);
            let covered: u32 = p.iter().map(|(_, l)| 1u32 << (16 - l)).sum();
            assert_eq!(covered, u32::from(b - a) + 1);
            assert_eq!(p[0].0, a);
        }
    }
}
