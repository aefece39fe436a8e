//! Sets of (protocol, port) as merged intervals: the currency of connectivity results.

use std::fmt;

use palisade_model::Protocol;

/// Per protocol, sorted disjoint non-adjacent inclusive ranges over 0..=65535.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRanges {
    by_protocol: [Vec<(u16, u16)>; 3],
}

fn index(p: Protocol) -> usize {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }
}

fn normalize(ranges: &mut Vec<(u16, u16)>) {
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *ranges = out;
}

impl PortRanges {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn all() -> Self {
        Self {
            by_protocol: [vec![(0, 65535)], vec![(0, 65535)], vec![(0, 65535)]],
        }
    }

    pub fn single(protocol: Protocol, from: u16, to: u16) -> Self {
        let mut s = Self::none();
        s.by_protocol[index(protocol)].push((from, to));
        s
    }

    pub fn is_empty(&self) -> bool {
        self.by_protocol.iter().all(Vec::is_empty)
    }

    pub fn is_all(&self) -> bool {
        self.by_protocol
            .iter()
            .all(|r| r.as_slice() == [(0, 65535)])
    }

    pub fn add(&mut self, protocol: Protocol, from: u16, to: u16) {
        let r = &mut self.by_protocol[index(protocol)];
        r.push((from, to));
        normalize(r);
    }

    pub fn union_with(&mut self, other: &PortRanges) {
        for (mine, theirs) in self.by_protocol.iter_mut().zip(&other.by_protocol) {
            if !theirs.is_empty() {
                mine.extend_from_slice(theirs);
                normalize(mine);
            }
        }
    }

    pub fn intersect(&self, other: &PortRanges) -> PortRanges {
        let mut out = PortRanges::none();
        for i in 0..3 {
            let (a, b) = (&self.by_protocol[i], &other.by_protocol[i]);
            let (mut x, mut y) = (0, 0);
            while x < a.len() && y < b.len() {
                let lo = a[x].0.max(b[y].0);
                let hi = a[x].1.min(b[y].1);
                if lo <= hi {
                    out.by_protocol[i].push((lo, hi));
                }
                if a[x].1 < b[y].1 { x += 1 } else { y += 1 }
            }
        }
        out
    }

    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.by_protocol[index(protocol)]
            .iter()
            .any(|&(a, b)| a <= port && port <= b)
    }

    /// (protocol, from, to) in protocol order.
    pub fn iter(&self) -> impl Iterator<Item = (Protocol, u16, u16)> + '_ {
        Protocol::ALL.iter().flat_map(move |&p| {
            self.by_protocol[index(p)]
                .iter()
                .map(move |&(a, b)| (p, a, b))
        })
    }
}

impl fmt::Display for PortRanges {
    /// `all`, `none`, or `TCP 80,8080-8090; UDP 53`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut parts = Vec::new();
        for p in Protocol::ALL {
            let r = &self.by_protocol[index(p)];
            if r.is_empty() {
                continue;
            }
            let list: Vec<String> = r
                .iter()
                .map(|&(a, b)| match (a, b) {
                    (0, 65535) => "all".to_string(),
                    (a, b) if a == b => a.to_string(),
                    (a, b) => format!("{a}-{b}"),
                })
                .collect();
            parts.push(format!("{p} {}", list.join(",")));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges_adjacent_and_intersect_clips() {
        let mut a = PortRanges::single(Protocol::Tcp, 80, 81);
        a.add(Protocol::Tcp, 82, 90);
        a.add(Protocol::Udp, 53, 53);
        assert_eq!(a.to_string(), "TCP 80-90; UDP 53");
        let b = PortRanges::single(Protocol::Tcp, 85, 100);
        assert_eq!(a.intersect(&b).to_string(), "TCP 85-90");
        assert!(PortRanges::all().intersect(&a) == a);
        assert!(
            a.intersect(&PortRanges::single(Protocol::Sctp, 1, 2))
                .is_empty()
        );
    }
}
