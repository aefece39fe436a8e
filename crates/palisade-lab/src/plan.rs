//! The addressing plan and pod placement: pure functions, no I/O.
//!
//! | what                         | IPv4                         | IPv6                              |
//! | ---------------------------- | ---------------------------- | --------------------------------- |
//! | whole lab range              | `198.18.0.0/15` (RFC 2544)   | `fd50:a15a:de::/48` (ULA)         |
//! | pods of node `i`             | `198.18.(i+1).0/24`          | `fd50:a15a:de:(i+1)::/64`         |
//! | node `i` address (on `lo`,   | `198.18.(i+1).1/32`          | `fd50:a15a:de:(i+1)::1/128`       |
//! | and the pods' gateway)       | (also on every `p<j>`)       | gateway is `fe80::1` on `p<j>`    |
//! | pod in slot `s` of node `i`  | `198.18.(i+1).(s+2)/32`      | `fd50:a15a:de:(i+1)::(s+2)/128`   |
//! | node link `l` (node `a<b`)   | `198.18.0.(4l+1)` on `a`, `.(4l+2)` on `b`, `/30` | `fd50:a15a:de::(4l+1)`, `::(4l+2)`, `/126` |
//!
//! Slots count the pods of one node in spec order. IPv6 host parts are the same numbers as
//! the IPv4 ones (so `198.18.1.12` pairs with `fd50:a15a:de:1::c`, hex).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use palisade_model::{Key, Protocol};

use crate::{LabError, LabSpec};

/// Most nodes a lab may have (node links are /30s out of `198.18.0.0/24`).
pub const MAX_NODES: usize = 8;
/// Most pods on one node (slots 0..=252 give host parts 2..=254).
pub const MAX_PODS_PER_NODE: usize = 253;
/// The gateway every pod's IPv6 default route points at (configured on the node side).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The whole IPv4 range the lab uses: the RFC 2544 benchmark range.
pub fn lab_range_v4() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 15).expect("valid prefix")
}

/// The whole IPv6 range the lab uses: one ULA /48.
pub fn lab_range_v6() -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0xfd50, 0xa15a, 0xde, 0, 0, 0, 0, 0), 48).expect("valid prefix")
}

fn third_octet(node: usize) -> u8 {
    u8::try_from(node + 1).expect("node index checked against MAX_NODES")
}

pub fn node_pod_subnet_v4(node: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(198, 18, third_octet(node), 0), 24).expect("valid prefix")
}

pub fn node_pod_subnet_v6(node: usize) -> Ipv6Net {
    let seg = u16::from(third_octet(node));
    Ipv6Net::new(Ipv6Addr::new(0xfd50, 0xa15a, 0xde, seg, 0, 0, 0, 0), 64).expect("valid prefix")
}

/// The node's own IPv4 address; also the IPv4 gateway of its pods.
pub fn node_addr_v4(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, third_octet(node), 1)
}

pub fn node_addr_v6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd50,
        0xa15a,
        0xde,
        u16::from(third_octet(node)),
        0,
        0,
        0,
        1,
    )
}

fn host_part(slot: usize) -> u8 {
    u8::try_from(slot + 2).expect("slot checked against MAX_PODS_PER_NODE")
}

pub fn pod_addr_v4(node: usize, slot: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, third_octet(node), host_part(slot))
}

pub fn pod_addr_v6(node: usize, slot: usize) -> Ipv6Addr {
    let seg = u16::from(third_octet(node));
    Ipv6Addr::new(
        0xfd50,
        0xa15a,
        0xde,
        seg,
        0,
        0,
        0,
        u16::from(host_part(slot)),
    )
}

/// Address of one end of node link `link` (`side` 0 = the lower node index, 1 = the higher).
pub fn link_addr_v4(link: usize, side: usize) -> Ipv4Addr {
    let host = u8::try_from(4 * link + 1 + side).expect("link index checked against MAX_NODES");
    Ipv4Addr::new(198, 18, 0, host)
}

pub fn link_addr_v6(link: usize, side: usize) -> Ipv6Addr {
    let host = u16::try_from(4 * link + 1 + side).expect("link index checked against MAX_NODES");
    Ipv6Addr::new(0xfd50, 0xa15a, 0xde, 0, 0, 0, 0, host)
}

/// Every unordered node pair `(a, b)` with `a < b`, in order; the position is the link index.
pub fn node_links(nodes: usize) -> Vec<(usize, usize)> {
    let mut links = Vec::new();
    for a in 0..nodes {
        for b in a + 1..nodes {
            links.push((a, b));
        }
    }
    links
}

/// One pod after placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedPod {
    pub key: Key,
    pub node: usize,
    pub slot: usize,
    /// IPv4 first, then IPv6 (only the families the spec asks for).
    pub ips: Vec<IpAddr>,
    pub ports: Vec<(u16, Protocol)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub nodes: usize,
    pub pods: Vec<PlannedPod>,
    pub links: Vec<(usize, usize)>,
}

/// Validates the spec and places every pod.
///
/// Pods with an explicit node stay there. The others are placed round-robin, per namespace:
/// a namespace's first unplaced pod goes to the node the global round-robin pointer is on,
/// and its next ones to the following nodes, so the pods of one namespace always spread over
/// the nodes, however the spec interleaves namespaces.
pub(crate) fn plan(spec: &LabSpec) -> Result<Plan, LabError> {
    if spec.nodes == 0 || spec.nodes > MAX_NODES {
        return Err(LabError::Spec(format!(
            "nodes: {} (a lab has 1 to {MAX_NODES} nodes)",
            spec.nodes
        )));
    }
    if !spec.families.v4 && !spec.families.v6 {
        return Err(LabError::Spec("families: at least one of v4 and v6".into()));
    }
    let mut seen = HashSet::new();
    for pod in &spec.pods {
        if !seen.insert(&pod.key) {
            return Err(LabError::Spec(format!("pods: {} listed twice", pod.key)));
        }
        if let Some(n) = pod.node
            && n >= spec.nodes
        {
            return Err(LabError::Spec(format!(
                "pods: {}: node {n} does not exist (the lab has {} nodes)",
                pod.key, spec.nodes
            )));
        }
    }

    let mut pointer = 0usize;
    let mut next_in_ns: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_node = vec![0usize; spec.nodes];
    let mut pods = Vec::with_capacity(spec.pods.len());
    for pod in &spec.pods {
        let node = match pod.node {
            Some(n) => n,
            None => {
                let next = next_in_ns
                    .entry(pod.key.namespace.as_str())
                    .or_insert(pointer);
                let node = *next % spec.nodes;
                *next += 1;
                pointer += 1;
                node
            }
        };
        let slot = per_node[node];
        if slot >= MAX_PODS_PER_NODE {
            return Err(LabError::Spec(format!(
                "pods: node {node} would get more than {MAX_PODS_PER_NODE} pods"
            )));
        }
        per_node[node] += 1;
        let mut ips = Vec::new();
        if spec.families.v4 {
            ips.push(IpAddr::V4(pod_addr_v4(node, slot)));
        }
        if spec.families.v6 {
            ips.push(IpAddr::V6(pod_addr_v6(node, slot)));
        }
        pods.push(PlannedPod {
            key: pod.key.clone(),
            node,
            slot,
            ips,
            ports: pod.ports.clone(),
        });
    }
    Ok(Plan {
        nodes: spec.nodes,
        pods,
        links: node_links(spec.nodes),
    })
}

/// Why the host's own configuration rules the lab out, if it does: any host address
/// overlapping a lab range, or any host route into one.
pub(crate) fn host_conflicts(ip_o_addr: &str, routes: &str) -> Vec<String> {
    let ranges = [IpNet::V4(lab_range_v4()), IpNet::V6(lab_range_v6())];
    let overlaps = |net: &IpNet| {
        ranges
            .iter()
            .any(|r| r.contains(&net.network()) || net.contains(&r.network()))
    };
    let mut found = Vec::new();
    // `ip -o addr`: "4: eth0    inet 192.0.2.2/24 brd ... scope global eth0\ ..."
    for line in ip_o_addr.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if (w == "inet" || w == "inet6")
                && let Some(addr) = words.next()
                && let Ok(net) = addr.parse::<IpNet>()
                && overlaps(&net)
            {
                let dev = line.split_whitespace().nth(1).unwrap_or("?");
                found.push(format!("address {addr} on {dev}"));
            }
        }
    }
    // `ip -o route show table all`: the first word is the destination (or a route type).
    for line in routes.lines() {
        let mut words = line.split_whitespace();
        let mut dest = words.next().unwrap_or("");
        if matches!(
            dest,
            "local"
                | "broadcast"
                | "unicast"
                | "multicast"
                | "anycast"
                | "blackhole"
                | "unreachable"
                | "prohibit"
                | "throw"
        ) {
            dest = words.next().unwrap_or("");
        }
        let net = dest
            .parse::<IpNet>()
            .ok()
            .or_else(|| dest.parse::<IpAddr>().ok().map(IpNet::from));
        if let Some(net) = net
            && ranges
                .iter()
                .any(|r| r.contains(&net.network()) && net.prefix_len() >= r.prefix_len())
        {
            found.push(format!("route {}", line.trim()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Families, LabPod};

    fn spec(pods: &[&str]) -> LabSpec {
        LabSpec {
            pods: pods
                .iter()
                .map(|k| LabPod::new(k.parse().unwrap()))
                .collect(),
            ..LabSpec::default()
        }
    }

    fn nodes_of(plan: &Plan) -> Vec<(String, usize)> {
        plan.pods
            .iter()
            .map(|p| (p.key.to_string(), p.node))
            .collect()
    }

    #[test]
    fn addresses_follow_the_documented_plan() {
        assert_eq!(pod_addr_v4(0, 0).to_string(), "198.18.1.2");
        assert_eq!(pod_addr_v6(1, 10).to_string(), "fd50:a15a:de:2::c");
        assert_eq!(node_addr_v4(1).to_string(), "198.18.2.1");
        assert_eq!(node_pod_subnet_v6(0).to_string(), "fd50:a15a:de:1::/64");
        assert_eq!(link_addr_v4(0, 1).to_string(), "198.18.0.2");
        assert_eq!(link_addr_v6(1, 0).to_string(), "fd50:a15a:de::5");
        let links = node_links(MAX_NODES);
        let last = links.len() - 1;
        assert!(lab_range_v4().contains(&link_addr_v4(last, 1)));
        assert!(lab_range_v4().contains(&pod_addr_v4(MAX_NODES - 1, MAX_PODS_PER_NODE - 1)));
        assert!(lab_range_v6().contains(&pod_addr_v6(MAX_NODES - 1, MAX_PODS_PER_NODE - 1)));
    }

    #[test]
    fn namespaces_spread_over_both_nodes_however_interleaved() {
        let grouped = plan(&spec(&["x/a", "x/b", "x/c", "y/a", "y/b", "y/c"])).unwrap();
        assert_eq!(
            nodes_of(&grouped),
            [
                ("x/a", 0),
                ("x/b", 1),
                ("x/c", 0),
                ("y/a", 1),
                ("y/b", 0),
                ("y/c", 1)
            ]
            .map(|(k, n)| (k.to_string(), n))
        );
        let interleaved = plan(&spec(&["x/a", "y/a", "x/b", "y/b"])).unwrap();
        assert_eq!(
            nodes_of(&interleaved),
            [("x/a", 0), ("y/a", 1), ("x/b", 1), ("y/b", 0)].map(|(k, n)| (k.to_string(), n))
        );
    }

    #[test]
    fn explicit_nodes_and_slots() {
        let mut s = spec(&["x/a", "x/b"]);
        s.pods[0].node = Some(1);
        let p = plan(&s).unwrap();
        assert_eq!((p.pods[0].node, p.pods[0].slot), (1, 0));
        assert_eq!(
            p.pods[0].ips,
            vec![IpAddr::from(pod_addr_v4(1, 0)), pod_addr_v6(1, 0).into()]
        );
        s.pods[1].node = Some(2);
        assert!(matches!(plan(&s), Err(LabError::Spec(_))));
    }

    #[test]
    fn spec_errors() {
        assert!(plan(&spec(&["x/a", "x/a"])).is_err());
        assert!(
            plan(&LabSpec {
                nodes: 0,
                ..LabSpec::default()
            })
            .is_err()
        );
        let none = Families {
            v4: false,
            v6: false,
        };
        assert!(
            plan(&LabSpec {
                families: none,
                ..LabSpec::default()
            })
            .is_err()
        );
        let v6 = plan(&LabSpec {
            families: Families::V6_ONLY,
            ..spec(&["x/a"])
        })
        .unwrap();
        assert_eq!(v6.pods[0].ips, vec![IpAddr::from(pod_addr_v6(0, 0))]);
    }

    #[test]
    fn host_conflicts_are_found_in_addresses_and_routes() {
        let addrs = "4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\\n\
                     4: eth0    inet6 fd00::2/64 scope global nodad \\\n";
        assert!(host_conflicts(addrs, "default via 192.0.2.1 dev eth0\n").is_empty());
        let clash = "5: tun0    inet 198.19.4.4/16 scope global tun0\\\n";
        assert_eq!(
            host_conflicts(clash, ""),
            vec!["address 198.19.4.4/16 on tun0"]
        );
        let wide = "5: x    inet6 fd50::1/16 scope global\\\n";
        assert_eq!(host_conflicts(wide, "").len(), 1);
        let route =
            "198.18.7.0/24 via 192.0.2.9 dev eth0\nlocal fd50:a15a:de::1 dev lo table local\n";
        assert_eq!(host_conflicts("", route).len(), 2);
    }
}
