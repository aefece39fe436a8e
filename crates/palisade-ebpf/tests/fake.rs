//! The translation and the diff, without root: [`FakeBpf`] holds the maps, and its
//! `judge` runs a packet through the same lookups as the program.

use std::net::IpAddr;
use std::time::Duration;

use palisade_ebpf::layout::{HOOK_FROM_POD, HOOK_TO_POD};
use palisade_ebpf::{EbpfDataplane, FakeBpf, FakePacket, HostRoute};
use palisade_ir::eval::{DirectionVerdict, Transport};
use palisade_ir::events::{EventConfig, EventTag, ReasonIndex};
use palisade_ir::{
    Action, AllowRule, AuditTier, Dataplane, Direction, DirectionRules, Endpoint, NodeRuleset,
    PeerMatch, PeerSet, PortMatch, PortRange, PortSet, Protocol, RuleOrigin, RulesetDiff, SetId,
    TierRule,
};
use proptest::prelude::*;

const ME_V4: [u8; 4] = [10, 1, 0, 1];

fn me(v6: bool) -> IpAddr {
    if v6 {
        "fd00:1::1".parse().unwrap()
    } else {
        IpAddr::from(ME_V4)
    }
}

fn peer_ip(n: u8, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n])
    } else {
        IpAddr::from([10, 0, 0, n])
    }
}

fn origin(name: &str, d: Direction, i: usize) -> RuleOrigin {
    RuleOrigin {
        policy_namespace: "ns".into(),
        policy_name: name.into(),
        direction: d,
        rule_index: i,
    }
}

type RuleSpec = (Option<(Vec<u8>, Vec<(u8, u8)>)>, Option<(u8, u16, u16)>, u8);

/// Rules over peers 10.0.0.0/28 (and fd00::/124), ports 75..96, in random tiers.
fn rules_strategy() -> impl Strategy<Value = Vec<RuleSpec>> {
    let peer = prop_oneof![
        Just(None),
        (
            proptest::collection::vec(0u8..16, 0..5),
            proptest::collection::vec((0u8..16, 28u8..=32), 0..3)
        )
            .prop_map(Some),
    ];
    let port = prop_oneof![Just(None), (0u8..3, 75u16..90, 0u16..6).prop_map(Some)];
    // tier: 0..=5 NetworkPolicy, 6 admin allow, 7 admin deny, 8 admin pass, 9 baseline
    proptest::collection::vec((peer, port, 0u8..10), 1..7)
}

/// One endpoint direction with `specs` in their tiers. The NetworkPolicy rules go to the
/// audit tier when the direction is `audited` and not `isolated`.
fn build(
    specs: &[RuleSpec],
    d: Direction,
    isolated: bool,
    audited: bool,
) -> (NodeRuleset, DirectionRules) {
    let mut rs = NodeRuleset {
        node: "n".into(),
        ..Default::default()
    };
    let mut rules = DirectionRules {
        isolated,
        isolated_by: if isolated {
            vec!["ns/p".into()]
        } else {
            vec![]
        },
        audit: (audited && !isolated).then(|| AuditTier {
            isolated_by: vec!["ns/q".into()],
            rules: vec![],
        }),
        ..Default::default()
    };
    for (i, (peer, port, tier)) in specs.iter().enumerate() {
        let peers = match peer {
            None => PeerMatch::Any,
            Some((addrs, nets)) => {
                let mut blocks: Vec<ipnet::IpNet> = Vec::new();
                for v6 in [false, true] {
                    let mut fam: Vec<ipnet::IpNet> = nets
                        .iter()
                        .map(|&(a, len)| {
                            let len = if v6 { len + 96 } else { len };
                            ipnet::IpNet::new(peer_ip(a, v6), len).unwrap().trunc()
                        })
                        .collect();
                    fam.sort_by_key(|n| (n.network(), n.prefix_len()));
                    fam.dedup_by(|b, a| a.contains(&b.network()));
                    blocks.extend(fam);
                }
                let id = SetId(format!("peer_{i}"));
                rs.peer_sets.insert(
                    id.clone(),
                    PeerSet {
                        addresses: addrs
                            .iter()
                            .flat_map(|&a| [peer_ip(a, false), peer_ip(a, true)])
                            .collect(),
                        blocks,
                    },
                );
                PeerMatch::Set(id)
            }
        };
        let ports = match port {
            None => PortMatch::Any,
            Some((p, first, len)) => {
                let set = PortSet {
                    ranges: vec![PortRange {
                        protocol: Protocol::ALL[*p as usize],
                        first: *first,
                        last: first + len,
                    }],
                };
                let id = set.id();
                rs.port_sets.insert(id.clone(), set);
                PortMatch::Set(id)
            }
        };
        let o = origin(&format!("p{i}"), d, i);
        match tier {
            0..=5 if isolated => rules.rules.push(AllowRule {
                peers,
                ports,
                origin: o,
            }),
            0..=5 => {
                if let Some(audit) = &mut rules.audit {
                    audit.rules.push(AllowRule {
                        peers,
                        ports,
                        origin: o,
                    });
                }
            }
            6..=8 => rules.admin.push(TierRule {
                action: [Action::Allow, Action::Deny, Action::Pass][(*tier - 6) as usize],
                peers,
                ports,
                origin: o,
            }),
            _ => rules.baseline.push(TierRule {
                action: if i % 2 == 0 {
                    Action::Allow
                } else {
                    Action::Deny
                },
                peers,
                ports,
                origin: o,
            }),
        }
    }
    let (ingress, egress) = match d {
        Direction::Ingress => (rules.clone(), DirectionRules::default()),
        Direction::Egress => (DirectionRules::default(), rules.clone()),
    };
    rs.endpoints.insert(
        "ns/a".into(),
        Endpoint {
            name: "ns/a".into(),
            ips: vec![me(false), me(true)],
            ingress,
            egress,
        },
    );
    rs.prune_sets();
    (rs, rules)
}

fn routes() -> Vec<HostRoute> {
    [me(false), me(true)]
        .into_iter()
        .map(|addr| HostRoute {
            addr,
            ifname: "p0".into(),
            ifindex: 5,
        })
        .collect()
}

fn packet(d: Direction, peer: IpAddr, proto: u8, port: u16, v6: bool) -> FakePacket {
    let (hook, src, dst) = match d {
        Direction::Ingress => (HOOK_TO_POD, peer, me(v6)),
        Direction::Egress => (HOOK_FROM_POD, me(v6), peer),
    };
    FakePacket {
        ifindex: 5,
        hook,
        ingress_ifindex: 9,
        src,
        dst,
        proto,
        sport: 40000,
        dport: port,
        syn_only: true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// The maps decide every new connection as `palisade_ir::eval` does (every tier,
    /// audit mode, both families, both directions), count it on the same rule or
    /// endpoint, and report it with the event tag of that reason.
    #[test]
    fn the_maps_agree_with_the_executable_meaning(
        specs in rules_strategy(),
        ingress in any::<bool>(),
        isolated in any::<bool>(),
        audited in any::<bool>(),
        v6 in any::<bool>(),
        peer in 0u8..20,
        proto in 0usize..4,
        port in 70u16..100,
    ) {
        let d = if ingress { Direction::Ingress } else { Direction::Egress };
        let (rs, rules) = build(&specs, d, isolated, audited);
        let fake = FakeBpf::with_routes(routes());
        let events = EventConfig { log_allowed: true, ..EventConfig::default() };
        let mut dp = EbpfDataplane::new(fake.clone()).with_events(Some(events));
        let mut source = dp.events().unwrap();
        dp.apply_full(&rs).unwrap();
        prop_assert_eq!(fake.lock().attached.iter().copied().collect::<Vec<_>>(), vec![5]);
        let transport = if proto == 3 { Transport::Other } else { Transport::Port(Protocol::ALL[proto], port) };
        let (number, port) = match transport { Transport::Port(p, port) => (p.number(), port), Transport::Other => (1, 0) };
        let ip = peer_ip(peer, v6);
        let expected = rs.judge(&rules, ip, transport);
        let before = dp.counters().unwrap();
        let passed = fake.judge(packet(d, ip, number, port, v6));
        prop_assert_eq!(passed, expected.allows(), "{:?}", expected);
        let after = dp.counters().unwrap();
        let moved: Vec<String> = after.allowed.iter().filter(|(o, c)| before.allowed.get(*o) != Some(c)).map(|(o, _)| format!("allow {o}"))
            .chain(after.default_deny.iter().filter(|(k, c)| before.default_deny.get(*k) != Some(c)).map(|(k, _)| format!("deny {} {}", k.0, k.1.as_str())))
            .chain(after.audit_denied.iter().filter(|(k, c)| before.audit_denied.get(*k) != Some(c)).map(|(k, _)| format!("audit {} {}", k.0, k.1.as_str())))
            .collect();
        let (want, tags): (Vec<String>, Vec<EventTag>) = match &expected {
            DirectionVerdict::Allowed(o) => (vec![format!("allow {o}")], vec![EventTag::allowed(o)]),
            DirectionVerdict::DefaultDeny => (vec![format!("deny ns/a {}", d.as_str())], vec![EventTag::denied("ns/a", d)]),
            DirectionVerdict::AuditDenied => (vec![format!("audit ns/a {}", d.as_str())], vec![EventTag::audit_denied("ns/a", d)]),
            _ => (vec![], vec![]),
        };
        prop_assert_eq!(moved, want);
        let reported: Vec<EventTag> = source.recv(Duration::ZERO).unwrap().iter().map(|e| e.tag).collect();
        prop_assert_eq!(&reported, &tags);
        // The reason the reader finds for the tag is the one the ruleset gives.
        let reasons = ReasonIndex::of(&rs);
        for tag in &reported {
            prop_assert!(reasons.get(tag).is_some(), "{tag} unknown to the ruleset's reasons");
        }
    }

    /// Any chain of updates leaves the maps enforcing exactly what a full apply does.
    #[test]
    fn updates_equal_full_applies(steps in proptest::collection::vec((rules_strategy(), any::<bool>(), any::<bool>(), any::<bool>()), 1..6)) {
        let updated_fake = FakeBpf::with_routes(routes());
        let mut updated = EbpfDataplane::new(updated_fake.clone());
        let mut current = NodeRuleset { node: "n".into(), ..Default::default() };
        updated.apply_full(&current).unwrap();
        for (specs, ingress, isolated, audited) in steps {
            let d = if ingress { Direction::Ingress } else { Direction::Egress };
            let (desired, _) = build(&specs, d, isolated, audited);
            let diff = RulesetDiff::between(&current, &desired);
            let report = updated.apply_update(&current, &desired, &diff).unwrap();
            prop_assert!(!report.full, "an update after a full apply is a diff");
            let mut fresh = EbpfDataplane::new(FakeBpf::with_routes(routes()));
            fresh.apply_full(&desired).unwrap();
            prop_assert_eq!(updated.kernel_state().unwrap(), fresh.kernel_state().unwrap());
            // Both generations hold the new ruleset once the update is done.
            let other = EbpfDataplane::new(updated_fake.clone()).kernel_state().unwrap();
            prop_assert_eq!(other, fresh.kernel_state().unwrap());
            current = desired;
        }
    }
}

fn simple(isolated_ingress: bool, allow_port: Option<u16>) -> NodeRuleset {
    let specs: Vec<RuleSpec> = allow_port
        .map(|p| (Some((vec![3], vec![])), Some((0, p, 0)), 0))
        .into_iter()
        .collect();
    build(&specs, Direction::Ingress, isolated_ingress, false).0
}

#[test]
fn a_failed_write_mid_update_leaves_the_previous_ruleset_in_force() {
    let fake = FakeBpf::with_routes(routes());
    let mut dp = EbpfDataplane::new(fake.clone());
    let old = simple(true, Some(80));
    dp.apply_full(&old).unwrap();
    let state = dp.kernel_state().unwrap();
    let allowed = |f: &FakeBpf, port| {
        f.judge(packet(
            Direction::Ingress,
            peer_ip(3, false),
            6,
            port,
            false,
        ))
    };
    assert!(allowed(&fake, 80));
    assert!(!allowed(&fake, 81));
    // The new ruleset allows 81 instead; the third write of the update fails.
    let new = simple(true, Some(81));
    let writes = fake.lock().writes;
    fake.lock().fail_from_write = Some(writes + 3);
    let err = dp
        .apply_update(&old, &new, &RulesetDiff::between(&old, &new))
        .expect_err("the write fails");
    assert!(err.to_string().contains("ebpf"), "{err}");
    assert_eq!(
        dp.kernel_state().unwrap(),
        state,
        "the active generation is untouched"
    );
    assert!(allowed(&fake, 80) && !allowed(&fake, 81));
    // Once writes work again, the update goes through (rewriting the half-written generation).
    fake.lock().fail_from_write = None;
    dp.apply_update(&old, &new, &RulesetDiff::between(&old, &new))
        .unwrap();
    assert!(!allowed(&fake, 80) && allowed(&fake, 81));
    let mut fresh = EbpfDataplane::new(FakeBpf::with_routes(routes()));
    fresh.apply_full(&new).unwrap();
    assert_eq!(dp.kernel_state().unwrap(), fresh.kernel_state().unwrap());
}

#[test]
fn a_flow_entry_is_only_ridden_on_its_interface_and_direction() {
    // ns/a's ingress denies everything; its egress is open.
    let fake = FakeBpf::with_routes(routes());
    let mut dp = EbpfDataplane::new(fake.clone());
    dp.apply_full(&simple(true, None)).unwrap();
    let a = me(false);
    let b = peer_ip(9, false);
    let pkt = |ifindex, hook, src, dst, sport, dport, syn_only| FakePacket {
        ifindex,
        hook,
        ingress_ifindex: 9,
        src,
        dst,
        proto: 6,
        sport,
        dport,
        syn_only,
    };
    // Unsolicited: denied.
    assert!(!fake.judge(pkt(5, HOOK_TO_POD, b, a, 80, 1000, false)));
    // a opens a connection to b:80 (its egress is open) and b's reply passes.
    assert!(fake.judge(pkt(5, HOOK_FROM_POD, a, b, 1000, 80, true)));
    assert!(fake.judge(pkt(5, HOOK_TO_POD, b, a, 80, 1000, false)));
    // The same reply forged onto another interface: judged, denied.
    assert!(!fake.judge(pkt(6, HOOK_TO_POD, b, a, 80, 1000, false)));
    // Another port pair on the right interface: denied.
    assert!(!fake.judge(pkt(5, HOOK_TO_POD, b, a, 81, 1000, false)));
    // The reply tuple as a new connection (a SYN) never rides the entry.
    assert!(!fake.judge(pkt(5, HOOK_TO_POD, b, a, 80, 1000, true)));
    // Expiry: an idle flow is forgotten after its timeout.
    fake.lock().now += 3601 * 1_000_000_000;
    assert!(!fake.judge(pkt(5, HOOK_TO_POD, b, a, 80, 1000, false)));
}

#[test]
fn the_node_and_its_own_addresses_are_not_filtered() {
    let fake = FakeBpf::with_routes(routes());
    fake.lock().local = vec![IpAddr::from([10, 1, 0, 254])];
    let mut dp = EbpfDataplane::new(fake.clone());
    let mut rs = simple(true, None);
    rs.endpoints.get_mut("ns/a").unwrap().egress = DirectionRules {
        isolated: true,
        isolated_by: vec!["ns/p".into()],
        ..Default::default()
    };
    dp.apply_full(&rs).unwrap();
    let mut p = packet(
        Direction::Ingress,
        IpAddr::from([10, 1, 0, 254]),
        6,
        10250,
        false,
    );
    assert!(!fake.judge(p), "forwarded: judged");
    p.ingress_ifindex = 0;
    assert!(fake.judge(p), "sent by the node itself: passes");
    let to_node = packet(
        Direction::Egress,
        IpAddr::from([10, 1, 0, 254]),
        6,
        53,
        false,
    );
    assert!(
        fake.judge(to_node),
        "a pod's packet to the node's own address"
    );
    let elsewhere = packet(Direction::Egress, IpAddr::from([10, 9, 0, 1]), 6, 53, false);
    assert!(!fake.judge(elsewhere), "egress isolated");
}

#[test]
fn pods_come_and_go_as_attachments() {
    let fake = FakeBpf::with_routes(routes());
    let mut dp = EbpfDataplane::new(fake.clone());
    let empty = NodeRuleset {
        node: "n".into(),
        ..Default::default()
    };
    dp.apply_full(&empty).unwrap();
    assert!(fake.lock().attached.is_empty());
    let one = simple(true, Some(80));
    dp.apply_update(&empty, &one, &RulesetDiff::between(&empty, &one))
        .unwrap();
    assert_eq!(
        fake.lock().attached.len(),
        1,
        "the new pod's interface is attached"
    );
    dp.apply_update(&one, &empty, &RulesetDiff::between(&one, &empty))
        .unwrap();
    assert!(fake.lock().attached.is_empty(), "and detached when it goes");
    dp.remove().unwrap();
    assert!(!fake.lock().loaded);
    assert_eq!(dp.kernel_state().unwrap(), "");
}

#[test]
fn golden_render() {
    let mut specs: Vec<RuleSpec> = vec![
        (Some((vec![3, 4], vec![(8, 29)])), Some((0, 80, 3)), 0),
        (None, Some((1, 53, 0)), 1),
        (Some((vec![], vec![(0, 28)])), None, 2),
    ];
    let (mut rs, _) = build(&specs, Direction::Ingress, true, false);
    specs.truncate(1);
    let (eg, _) = build(&specs, Direction::Egress, true, false);
    let mut ep = eg.endpoints["ns/a"].clone();
    ep.name = "ns/b".into();
    ep.ips = vec![IpAddr::from([10, 1, 0, 2])];
    rs.endpoints.insert("ns/b".into(), ep);
    rs.peer_sets.extend(eg.peer_sets);
    rs.port_sets.extend(eg.port_sets);
    rs.validate().unwrap();
    let got = palisade_ebpf::render_full(&rs);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/basic.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
        std::fs::write(path, &got).unwrap();
    }
    let want = std::fs::read_to_string(path).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(got, want);
}

/// The program's rate limit, on the fake clock: a flood of denied connections is reported
/// `burst` times at once, then `rate` times per second; another endpoint direction has a
/// budget of its own; allowed connections are reported only with `log_allowed`.
#[test]
fn events_are_rate_limited_per_endpoint_direction() {
    let events = EventConfig {
        rate_per_second: 4,
        burst: 3,
        ..EventConfig::default()
    };
    let fake = FakeBpf::with_routes(routes());
    let mut dp = EbpfDataplane::new(fake.clone()).with_events(Some(events));
    let mut source = dp.events().unwrap();
    // Ingress isolated, 80/TCP allowed from anyone; egress isolated with no rule.
    let mut rs = simple(true, Some(80));
    let ep = rs.endpoints.get_mut("ns/a").unwrap();
    ep.egress.isolated = true;
    ep.egress.isolated_by = vec!["ns/p".into()];
    dp.apply_full(&rs).unwrap();
    let denied_in = packet(Direction::Ingress, peer_ip(3, false), 6, 81, false);
    let allowed_in = packet(Direction::Ingress, peer_ip(3, false), 6, 80, false);
    let denied_out = packet(Direction::Egress, peer_ip(3, false), 6, 80, false);
    let mut count = |p: FakePacket, n: usize| {
        for _ in 0..n {
            fake.judge(p);
        }
        source.recv(Duration::ZERO).unwrap()
    };
    assert_eq!(count(denied_in, 50).len(), 3, "the burst");
    assert_eq!(count(allowed_in, 5).len(), 0, "allowed: not asked for");
    assert_eq!(
        count(denied_out, 50).len(),
        3,
        "egress has a budget of its own"
    );
    fake.lock().now += 1_000_000_000;
    let got = count(denied_in, 50);
    assert_eq!(
        got.len(),
        3,
        "a second later: rate x 1 s, capped at the burst"
    );
    assert!(
        got.iter()
            .all(|e| e.tag == EventTag::denied("ns/a", Direction::Ingress))
    );
    fake.lock().now += 250_000_000;
    assert_eq!(count(denied_in, 50).len(), 1, "a quarter second: one");
    assert_eq!(count(denied_in, 50).len(), 0);
}
