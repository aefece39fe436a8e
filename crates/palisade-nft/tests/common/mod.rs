//! Shared by the integration tests: hand-built IR fixtures, a seeded ruleset generator, a
//! canonical form of `nft list table`, a line diff, root gating and a netns guard.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use palisade_ir::{
    AllowRule, Direction, DirectionRules, Endpoint, IpRange, NodeRuleset, PeerMatch, PeerSet,
    PortMatch, PortRange, PortSet, Protocol, RuleOrigin, SetId,
};

// ---------------------------------------------------------------------------------------
// IR builders

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn to_u128(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn from_u128(v6: bool, v: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

/// `a.b.c.d/n` or an address (a /32 or /128).
pub fn cidr(s: &str) -> IpRange {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (ip(a), l.parse::<u32>().unwrap()),
        None => {
            let a = ip(s);
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let (v6, base) = to_u128(addr);
    let bits = if v6 { 128 } else { 32 };
    let host = if len == 0 {
        if v6 { u128::MAX } else { u128::from(u32::MAX) }
    } else {
        (1u128 << (bits - len)) - 1
    };
    IpRange {
        first: from_u128(v6, base & !host),
        last: from_u128(v6, (base & !host) | host),
    }
}

/// Sorted, merged (overlapping or adjacent), IPv4 first: the IR's peer set invariant.
pub fn normalize(ranges: Vec<IpRange>) -> Vec<IpRange> {
    let mut spans: Vec<(bool, u128, u128)> = ranges
        .into_iter()
        .map(|r| {
            let (v6, a) = to_u128(r.first);
            let (_, b) = to_u128(r.last);
            (v6, a, b)
        })
        .collect();
    spans.sort();
    let mut out: Vec<(bool, u128, u128)> = Vec::new();
    for s in spans {
        if let Some(last) = out.last_mut()
            && last.0 == s.0
            && s.1 <= last.2.saturating_add(1)
        {
            last.2 = last.2.max(s.2);
            continue;
        }
        out.push(s);
    }
    out.into_iter()
        .map(|(v6, a, b)| IpRange {
            first: from_u128(v6, a),
            last: from_u128(v6, b),
        })
        .collect()
}

/// `cidr` minus `excepts`, as ranges (what the engine makes of an ipBlock).
pub fn except(cidr_s: &str, excepts: &[&str]) -> Vec<IpRange> {
    let whole = cidr(cidr_s);
    let (v6, mut start) = to_u128(whole.first);
    let (_, end) = to_u128(whole.last);
    let mut holes: Vec<(u128, u128)> = excepts
        .iter()
        .map(|e| {
            let r = cidr(e);
            (to_u128(r.first).1, to_u128(r.last).1)
        })
        .collect();
    holes.sort();
    let mut out = Vec::new();
    for (a, b) in holes {
        if a > start {
            out.push(IpRange {
                first: from_u128(v6, start),
                last: from_u128(v6, a - 1),
            });
        }
        start = b + 1;
    }
    if start <= end {
        out.push(IpRange {
            first: from_u128(v6, start),
            last: from_u128(v6, end),
        });
    }
    out
}

/// Peer set from addresses (pod addresses) and CIDRs (blocks).
pub fn peers(items: &[&str]) -> PeerSet {
    let (addrs, nets): (Vec<&str>, Vec<&str>) = items.iter().partition(|s| !s.contains('/'));
    let mut set = peer_ranges(nets.iter().map(|s| cidr(s)).collect());
    set.addresses = addrs.iter().map(|s| ip(s)).collect();
    set
}

/// Peer set of blocks covering exactly `ranges`.
pub fn peer_ranges(ranges: Vec<IpRange>) -> PeerSet {
    PeerSet {
        addresses: Default::default(),
        blocks: palisade_ir::cidr::ranges_to_cidrs(&normalize(ranges)),
    }
}

pub fn ports(items: &[(Protocol, u16, u16)]) -> PortSet {
    let mut ranges: Vec<PortRange> = items
        .iter()
        .map(|&(protocol, first, last)| PortRange {
            protocol,
            first,
            last,
        })
        .collect();
    ranges.sort();
    // Merge per protocol, as the IR promises.
    let mut out: Vec<PortRange> = Vec::new();
    for r in ranges {
        if let Some(last) = out.last_mut()
            && last.protocol == r.protocol
            && u32::from(r.first) <= u32::from(last.last) + 1
        {
            last.last = last.last.max(r.last);
            continue;
        }
        out.push(r);
    }
    PortSet { ranges: out }
}

pub fn tcp(first: u16, last: u16) -> (Protocol, u16, u16) {
    (Protocol::Tcp, first, last)
}

pub fn udp(first: u16, last: u16) -> (Protocol, u16, u16) {
    (Protocol::Udp, first, last)
}

pub fn sctp(first: u16, last: u16) -> (Protocol, u16, u16) {
    (Protocol::Sctp, first, last)
}

/// Builds a [`NodeRuleset`] the way the engine would: sets keyed by their content name.
#[derive(Debug, Clone)]
pub struct Rs(pub NodeRuleset);

pub fn ruleset() -> Rs {
    Rs(NodeRuleset {
        node: "node-1".to_string(),
        ..NodeRuleset::default()
    })
}

impl Rs {
    pub fn endpoint(mut self, name: &str, ips: &[&str]) -> Rs {
        self.0.endpoints.insert(
            name.to_string(),
            Endpoint {
                name: name.to_string(),
                ips: ips.iter().map(|s| ip(s)).collect(),
                ingress: DirectionRules::default(),
                egress: DirectionRules::default(),
            },
        );
        self
    }

    fn dir(&mut self, ep: &str, d: Direction) -> &mut DirectionRules {
        let e = self
            .0
            .endpoints
            .get_mut(ep)
            .unwrap_or_else(|| panic!("no endpoint {ep}"));
        match d {
            Direction::Ingress => &mut e.ingress,
            Direction::Egress => &mut e.egress,
        }
    }

    pub fn isolate(mut self, ep: &str, d: Direction, by: &[&str]) -> Rs {
        let rules = self.dir(ep, d);
        rules.isolated = true;
        rules.isolated_by = by.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds an allow rule; `policy` is `ns/name`.
    pub fn allow(
        self,
        ep: &str,
        d: Direction,
        peer_set: Option<PeerSet>,
        port_set: Option<PortSet>,
        policy: &str,
        rule_index: usize,
    ) -> Rs {
        // A hand-built set is defined by its content; `allow_in` names one explicitly.
        let id = peer_set
            .as_ref()
            .map(|p| format!("content {:?} {:?}", p.addresses, p.blocks));
        self.allow_in(ep, d, id.as_deref(), peer_set, port_set, policy, rule_index)
    }

    /// [`Rs::allow`] with the peer set's definition named by the caller: the same
    /// `definition` keeps one set id while its members change.
    #[allow(clippy::too_many_arguments)]
    pub fn allow_in(
        mut self,
        ep: &str,
        d: Direction,
        definition: Option<&str>,
        peer_set: Option<PeerSet>,
        port_set: Option<PortSet>,
        policy: &str,
        rule_index: usize,
    ) -> Rs {
        let peers = match (peer_set, definition) {
            (Some(p), Some(def)) => {
                let n = SetId::peer_from_definition(def);
                self.0.peer_sets.insert(n.clone(), p);
                PeerMatch::Set(n)
            }
            _ => PeerMatch::Any,
        };
        let ports = match port_set {
            None => PortMatch::Any,
            Some(p) => {
                let n = p.id();
                self.0.port_sets.insert(n.clone(), p);
                PortMatch::Set(n)
            }
        };
        let (ns, name) = policy.split_once('/').unwrap();
        let origin = RuleOrigin {
            policy_namespace: ns.to_string(),
            policy_name: name.to_string(),
            direction: d,
            rule_index,
        };
        self.dir(ep, d).rules.push(AllowRule {
            peers,
            ports,
            origin,
        });
        self
    }

    /// Puts what `isolate` and `allow` built for `ep`'s direction `d` in audit mode: the
    /// same policies and rules, as an audit tier (reported, not enforced).
    pub fn in_audit_mode(mut self, ep: &str, d: Direction) -> Rs {
        let rules = self.dir(ep, d);
        let audit = palisade_ir::AuditTier {
            isolated_by: std::mem::take(&mut rules.isolated_by),
            rules: std::mem::take(&mut rules.rules),
        };
        rules.isolated = false;
        rules.audit = Some(audit);
        self
    }

    pub fn remove_endpoint(mut self, name: &str) -> Rs {
        self.0.endpoints.remove(name);
        self
    }

    pub fn build(mut self) -> NodeRuleset {
        self.0.prune_sets();
        self.0
    }
}

use Direction::{Egress, Ingress};

pub fn frontend() -> PeerSet {
    peers(&["10.0.2.10", "10.0.2.11", "10.0.2.20"])
}

/// The golden fixtures, by name (`tests/golden/<name>.nft`).
pub fn fixtures() -> Vec<(&'static str, NodeRuleset)> {
    vec![
        (
            // §1, §5: isolated for ingress, no rules: deny all.
            "default_deny_ingress",
            ruleset()
                .endpoint("default/db", &["10.0.1.5"])
                .isolate("default/db", Ingress, &["default/deny-all"])
                .build(),
        ),
        (
            // §6 podSelector peers, §8 endPort range.
            "allow_from_selector_port_range",
            ruleset()
                .endpoint("default/web", &["10.0.1.10"])
                .isolate("default/web", Ingress, &["default/allow-frontend"])
                .allow(
                    "default/web",
                    Ingress,
                    Some(peers(&["10.0.1.20", "10.0.1.21", "10.0.2.7"])),
                    Some(ports(&[tcp(8000, 8100)])),
                    "default/allow-frontend",
                    0,
                )
                .build(),
        ),
        (
            // §6 ipBlock minus except: ranges that are not CIDRs.
            "egress_ipblock_except",
            ruleset()
                .endpoint("default/app", &["10.0.1.30"])
                .isolate("default/app", Egress, &["default/egress-cidr"])
                .allow(
                    "default/app",
                    Egress,
                    Some(peer_ranges(except("172.16.0.0/12", &["172.16.5.0/24"]))),
                    Some(ports(&[tcp(443, 443)])),
                    "default/egress-cidr",
                    0,
                )
                .allow(
                    "default/app",
                    Egress,
                    Some(peer_ranges(except(
                        "10.0.0.0/8",
                        &["10.0.1.0/24", "10.9.0.0/16"],
                    ))),
                    Some(ports(&[tcp(53, 53), udp(53, 53)])),
                    "default/egress-cidr",
                    1,
                )
                .build(),
        ),
        (
            // §9 dual-stack: every rule for both families.
            "dual_stack",
            ruleset()
                .endpoint("default/dual", &["10.0.1.40", "fd00::40"])
                .isolate("default/dual", Ingress, &["default/dual-in"])
                .isolate("default/dual", Egress, &["default/dual-out"])
                .allow(
                    "default/dual",
                    Ingress,
                    Some(peers(&["10.0.1.41", "fd00::41"])),
                    Some(ports(&[tcp(443, 443)])),
                    "default/dual-in",
                    0,
                )
                .allow(
                    "default/dual",
                    Egress,
                    None,
                    Some(ports(&[tcp(53, 53), udp(53, 53)])),
                    "default/dual-out",
                    0,
                )
                .allow(
                    "default/dual",
                    Egress,
                    Some(peers(&["10.0.3.0/24", "fd00:1::/64"])),
                    None,
                    "default/dual-out",
                    1,
                )
                .build(),
        ),
        (
            // Audit mode: what the audited policy allows passes silently, the rest is
            // counted (and logged, with events on) as audit-denied, and passes too.
            "audit_mode",
            ruleset()
                .endpoint("default/api", &["10.0.1.70", "fd00::70"])
                .isolate("default/api", Ingress, &["default/lockdown"])
                .allow(
                    "default/api",
                    Ingress,
                    Some(frontend()),
                    Some(ports(&[tcp(443, 443)])),
                    "default/lockdown",
                    0,
                )
                .in_audit_mode("default/api", Ingress)
                .build(),
        ),
        (
            // §1 not isolated: no chain, no map entry.
            "non_isolated",
            ruleset()
                .endpoint("default/free", &["10.0.1.50", "fd00::50"])
                .build(),
        ),
        (
            // §8 egress named port resolved per peer pod: one origin, two rules.
            "egress_named_port",
            ruleset()
                .endpoint("default/client", &["10.0.1.60"])
                .isolate("default/client", Egress, &["default/to-http"])
                .allow(
                    "default/client",
                    Egress,
                    Some(peers(&["10.0.2.1"])),
                    Some(ports(&[tcp(8080, 8080)])),
                    "default/to-http",
                    0,
                )
                .allow(
                    "default/client",
                    Egress,
                    Some(peers(&["10.0.2.2", "10.0.2.3"])),
                    Some(ports(&[tcp(9090, 9090)])),
                    "default/to-http",
                    0,
                )
                .build(),
        ),
        (
            // Three endpoints and two policies share one peer set.
            "shared_peer_set",
            shared_peer_set(frontend()),
        ),
        (
            // §5 `ingress: [{}]` allows everything; egress isolated with no rules.
            "allow_all",
            ruleset()
                .endpoint("default/open", &["10.0.1.80"])
                .isolate("default/open", Ingress, &["default/allow-all"])
                .isolate(
                    "default/open",
                    Egress,
                    &["default/deny-egress", "default/lockdown"],
                )
                .allow("default/open", Ingress, None, None, "default/allow-all", 0)
                .build(),
        ),
    ]
}

pub fn shared_peer_set(front: PeerSet) -> NodeRuleset {
    let mut rs = ruleset();
    for (ep, addr) in [
        ("default/a", "10.0.1.71"),
        ("default/b", "10.0.1.72"),
        ("default/c", "10.0.1.73"),
    ] {
        rs = rs
            .endpoint(ep, &[addr])
            .isolate(ep, Ingress, &["default/allow-frontend"])
            .allow(
                ep,
                Ingress,
                Some(front.clone()),
                Some(ports(&[tcp(80, 80)])),
                "default/allow-frontend",
                0,
            );
    }
    rs.isolate("default/c", Egress, &["default/egress-frontend"])
        .allow(
            "default/c",
            Egress,
            Some(front),
            None,
            "default/egress-frontend",
            0,
        )
        .build()
}

/// Every fixture on one node.
pub fn combined() -> NodeRuleset {
    let mut all = NodeRuleset {
        node: "node-1".to_string(),
        ..NodeRuleset::default()
    };
    for (_, rs) in fixtures() {
        all.endpoints.extend(rs.endpoints);
        all.peer_sets.extend(rs.peer_sets);
        all.port_sets.extend(rs.port_sets);
    }
    all
}

// ---------------------------------------------------------------------------------------
// Seeded generator: small universes so consecutive rulesets share names.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const POLICIES: [&str; 3] = ["default/p1", "default/p2", "other/p3"];

pub fn random_ruleset(seed: u64) -> NodeRuleset {
    let mut r = Rng::new(seed);
    let remote: Vec<String> = (1..=10).map(|i| format!("10.0.9.{}", i * 2)).collect();
    let remote6: Vec<String> = (1..=4).map(|i| format!("fd00:9::{i:x}")).collect();
    let blocks = [
        vec![IpRange {
            first: ip("0.0.0.0"),
            last: ip("255.255.255.255"),
        }],
        except("192.168.0.0/16", &["192.168.3.0/24"]),
        except("fd00:100::/48", &["fd00:100::/64"]),
        vec![cidr("172.20.0.0/14")],
    ];
    let port_menu = [
        vec![tcp(80, 80)],
        vec![tcp(80, 80), tcp(443, 443)],
        vec![udp(53, 53), tcp(53, 53)],
        vec![tcp(8000, 8999), sctp(9000, 9000)],
        vec![tcp(1, 65535)],
    ];
    let mut rs = ruleset();
    let mut slot_used = [false; 8];
    for i in 0..6 {
        if !r.chance(75) {
            continue;
        }
        // IPs are drawn from slots so an address can move between endpoints across seeds
        // (a deleted pod's IP reused by another).
        let mut slot = r.below(8) as usize;
        while slot_used[slot] {
            slot = (slot + 1) % 8;
        }
        slot_used[slot] = true;
        let name = format!("ns{}/pod-{i}", i % 2);
        let v4 = format!("10.0.1.{}", slot + 1);
        let v6 = format!("fd00::{:x}", slot + 1);
        rs = if r.chance(30) {
            rs.endpoint(&name, &[&v4, &v6])
        } else {
            rs.endpoint(&name, &[&v4])
        };
        for d in [Ingress, Egress] {
            if !r.chance(60) {
                continue;
            }
            let by: Vec<&str> = POLICIES.iter().copied().filter(|_| r.chance(50)).collect();
            let by = if by.is_empty() { vec![POLICIES[0]] } else { by };
            rs = rs.isolate(&name, d, &by);
            let n_rules = r.below(4);
            for _ in 0..n_rules {
                let policy = *r.pick(&by);
                let index = r.below(2) as usize;
                let peer_set = match r.below(5) {
                    0 => None,
                    1 => Some(peer_ranges(r.pick(blocks.as_slice()).clone())),
                    _ => {
                        let mut items: Vec<IpRange> = remote
                            .iter()
                            .filter(|_| r.chance(40))
                            .map(|s| cidr(s))
                            .collect();
                        items.extend(remote6.iter().filter(|_| r.chance(30)).map(|s| cidr(s)));
                        Some(peer_ranges(items))
                    }
                };
                let port_set = if r.chance(25) {
                    None
                } else {
                    let menu: &Vec<(Protocol, u16, u16)> = r.pick(&port_menu);
                    Some(ports(menu))
                };
                rs = rs.allow(&name, d, peer_set, port_set, policy, index);
            }
        }
    }
    rs.build()
}

// ---------------------------------------------------------------------------------------
// Comparing kernel state

/// `nft list table` in a form independent of creation order: top-level objects sorted by
/// header, set and map elements sorted. Rule order inside a chain is kept (it matters).
pub fn canonical(listing: &str) -> String {
    palisade_nft::canonical_listing(listing)
}

/// A line diff (`-` expected, `+` actual), for failure messages.
pub fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Root gating and network namespaces

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// True when the test can use the kernel (root, `nft` and `ip` present). Otherwise prints
/// why and returns false, or panics if `PALISADE_REQUIRE_ROOT_TESTS=1`.
pub fn kernel_available(test: &str) -> bool {
    let reason = if effective_uid() != Some(0) {
        Some("not running as root")
    } else if !have("nft", "--version") {
        Some("nft is not installed")
    } else if !have("ip", "-V") {
        Some("ip (iproute2) is not installed")
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) => {
            if std::env::var("PALISADE_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
                panic!("{test}: {reason}, and PALISADE_REQUIRE_ROOT_TESTS=1");
            }
            eprintln!("skipping {test}: {reason}");
            false
        }
    }
}

static NETNS_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace of our own, deleted on drop (also when the test panics).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let n = NETNS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("palisade-nfttest-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns { name }
    }

    pub fn nft(&self) -> palisade_nft::SystemNft {
        palisade_nft::SystemNft::in_netns(self.name.clone())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("warning: could not delete netns {}: {out:?}", self.name);
        }
    }
}
