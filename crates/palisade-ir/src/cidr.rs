//! Address ranges as prefixes. ipset `hash:net`, BPF LPM tries and nft elements hold
//! prefixes; the engine computes ranges (a cidr minus its excepts). ipnet does the cutting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};
use serde::{Deserialize, Serialize};

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IpRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl IpRange {
    pub fn single(ip: IpAddr) -> IpRange {
        IpRange {
            first: ip,
            last: ip,
        }
    }

    pub fn of_net(net: &IpNet) -> IpRange {
        IpRange {
            first: net.network(),
            last: net.broadcast(),
        }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.first.is_ipv4() == ip.is_ipv4() && self.first <= *ip && *ip <= self.last
    }

    /// The fewest prefixes covering exactly this range (none for a reversed or mixed one).
    pub fn to_cidrs(&self) -> Vec<IpNet> {
        match (self.first, self.last) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => {
                Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect()
            }
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => {
                Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// An address as an integer of its family (IPv4 widened), for range arithmetic.
pub fn addr_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

/// The inverse of [`addr_to_u128`] for the family of `like`.
pub fn u128_to_addr(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

/// Sorted, disjoint, non-adjacent ranges (per family) as the fewest prefixes, IPv4 first.
pub fn ranges_to_cidrs(ranges: &[IpRange]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = ranges.iter().flat_map(IpRange::to_cidrs).collect();
    out.sort_by_key(|n| (n.addr().is_ipv6(), n.network(), n.prefix_len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: &str, b: &str) -> IpRange {
        IpRange {
            first: a.parse().unwrap(),
            last: b.parse().unwrap(),
        }
    }

    #[test]
    fn ranges_become_the_fewest_prefixes() {
        let nets: Vec<String> = r("10.0.0.0", "10.0.255.255")
            .to_cidrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/16"]);
        let nets: Vec<String> = r("10.2.0.0", "10.255.255.254")
            .to_cidrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets.first().map(String::as_str), Some("10.2.0.0/15"));
        assert_eq!(nets.last().map(String::as_str), Some("10.255.255.254/32"));
        assert_eq!(nets.len(), 29);
        assert!(r("10.0.0.2", "10.0.0.1").to_cidrs().is_empty());
        assert!(r("10.0.0.1", "::1").to_cidrs().is_empty());
        assert_eq!(
            r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").to_cidrs(),
            vec!["::/0".parse::<IpNet>().unwrap()]
        );
    }

    proptest::proptest! {
        #[test]
        fn prefixes_cover_exactly_the_range(a: u32, b: u32, probe: u32) {
            let (a, b) = (a.min(b), a.max(b));
            let range = IpRange { first: IpAddr::V4(a.into()), last: IpAddr::V4(b.into()) };
            let nets = range.to_cidrs();
            let ip = IpAddr::V4(probe.into());
            let in_nets = nets.iter().filter(|n| n.contains(&ip)).count();
            proptest::prop_assert_eq!(in_nets, usize::from(range.contains(&ip)));
            proptest::prop_assert!(nets.len() <= 62);
        }
    }
}
