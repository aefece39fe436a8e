//! Verdict events and audit mode, part of the contract suite (issue 14), with real packets:
//!
//! - every denied probe yields exactly one event (retransmissions folded, see
//!   `palisade_ir::events::Deduplicator`) whose reason equals the engine's explanation of
//!   that flow, and allowed probes yield none;
//! - counters of the allowing rule equal the number of allowed probes;
//! - a policy in audit mode never drops: the flows it would deny connect and are reported
//!   as audit-denied naming it; switching it to enforce is one update, after which the
//!   same flows are dropped and reported as denied;
//! - a flood of denied connections yields a bounded number of events (the kernel's rate
//!   limit), and allowed probes still connect meanwhile.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use palisade_engine::{ClusterState, Endpoint, Flow, SideVerdict};
use palisade_ir::events::{EventConfig, EventSource, KernelEvent, ReasonIndex, Verdict};
use palisade_lab::enforce::Enforcer;
use palisade_lab::{Lab, LabPod, LabSpec, ProbeOutcome, ProbeRequest, can_run_root_tests};
use palisade_model::load::{Loaded, load_str};
use palisade_model::{IpFamily, Key, Object, Protocol};

use super::BackendUnderTest;

const TCP: (u16, Protocol) = (80, Protocol::Tcp);
const UDP: (u16, Protocol) = (81, Protocol::Udp);

/// x/b's ingress is isolated; only x/a may reach it, on 80/TCP. y/c is isolated by a
/// policy in audit mode that allows nothing.
const POLICIES: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-a, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{port: 80, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: lockdown
  namespace: y
  annotations: {palisade.dev/mode: audit}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

fn key(s: &str) -> Key {
    s.parse().unwrap()
}

/// The lab's pods as the engine sees them, with the policies (`audit` as annotated, or
/// all enforced).
fn state(lab: &Lab, enforce_audited: bool) -> ClusterState {
    let mut objects: Vec<Object> = lab.engine_pods().into_iter().map(Object::Pod).collect();
    let mut loaded = Loaded::default();
    load_str(POLICIES, "events-policies", &mut loaded);
    assert!(loaded.is_ok(), "{:?}", loaded.errors);
    for (_, mut object) in loaded.objects {
        if let (Object::NetworkPolicy(p), true) = (&mut object, enforce_audited) {
            p.audit = false;
        }
        objects.push(object);
    }
    ClusterState::from_objects(&objects)
}

/// Reads every node's events for `wait`, as the agent would (first report per attempt).
fn collect(sources: &mut [Box<dyn EventSource>], wait: Duration) -> Vec<KernelEvent> {
    let mut dedup = palisade_ir::events::Deduplicator::new(Duration::from_secs(30));
    let until = Instant::now() + wait;
    let mut out = Vec::new();
    while Instant::now() < until {
        for s in sources.iter_mut() {
            for e in s.recv(Duration::from_millis(50)).expect("events") {
                if dedup.first(&e) {
                    out.push(e);
                }
            }
        }
    }
    out
}

/// What the engine says of `from -> to` on `service`, per side.
fn explain(
    state: &ClusterState,
    from: &Key,
    to: &Key,
    service: (u16, Protocol),
    family: IpFamily,
) -> (SideVerdict, SideVerdict) {
    let e = state
        .explain(&Flow {
            src: Endpoint::Pod(from.clone()),
            dst: Endpoint::Pod(to.clone()),
            protocol: service.1,
            port: service.0,
            family: Some(family),
        })
        .expect("explain");
    (e.egress, e.ingress)
}

pub fn events_name_the_engine_reason(b: &BackendUnderTest) {
    if !can_run_root_tests(true) {
        return;
    }
    let make_with_events = b.make_with_events;
    let _serial = super::serial();
    let spec = LabSpec {
        pods: vec![
            LabPod::new(key("x/a")).on_node(0).with_ports([TCP, UDP]),
            LabPod::new(key("x/b")).on_node(1).with_ports([TCP, UDP]),
            LabPod::new(key("y/c")).on_node(1).with_ports([TCP, UDP]),
            LabPod::new(key("y/d")).on_node(0).with_ports([TCP, UDP]),
        ],
        ..LabSpec::default()
    };
    let lab = Lab::create(spec).expect("lab");
    let events = EventConfig {
        rate_per_second: 5,
        burst: 10,
        ..EventConfig::default()
    };
    let mut enforcer = Enforcer::new(&lab, |i| make_with_events(lab.node_netns(i), events));
    let mut sources: Vec<Box<dyn EventSource>> = (0..lab.node_count())
        .map(|i| enforcer.events(i).expect("open events"))
        .collect();
    let audited = state(&lab, false);
    enforcer.enforce(&audited).expect("apply");
    let mut reasons = ReasonIndex::default();
    for i in 0..lab.node_count() {
        reasons.merge(ReasonIndex::of(enforcer.applied(i).unwrap()));
    }

    let pairs: Vec<(Key, Key, (u16, Protocol))> = [
        ("x/a", "x/b", TCP), // allowed by x/only-a ingress[0]
        ("y/d", "x/b", TCP), // denied: x/b isolated by x/only-a
        ("x/a", "x/b", UDP), // denied: the rule names 80/TCP only
        ("x/a", "y/c", TCP), // audit-denied by y/lockdown, connects
        ("y/d", "y/c", UDP), // audit-denied
        ("y/c", "y/d", TCP), // open
    ]
    .into_iter()
    .map(|(f, t, s)| (key(f), key(t), s))
    .collect();
    let mut expected_events = 0;
    let mut allowed_by_rule = 0;
    for family in [IpFamily::V4, IpFamily::V6] {
        for (from, to, service) in &pairs {
            let dst = lab.pod_ip(to, family).unwrap();
            let request = ProbeRequest::new(from.clone(), dst, service.0, service.1)
                .with_timeout(Duration::from_millis(800));
            let (outcome, _) = lab
                .probe_many_traced(std::slice::from_ref(&request))
                .remove(0);
            let (egress, ingress) = explain(&audited, from, to, *service, family);
            let allowed = egress.allows() && ingress.allows();
            assert_eq!(
                outcome == ProbeOutcome::Connected,
                allowed,
                "{from} -> {to} {service:?} {family}: probe {outcome}, engine {egress:?} / {ingress:?}"
            );
            let got = collect(&mut sources, Duration::from_millis(300));
            let wanted: Vec<(Verdict, Vec<String>)> = [&egress, &ingress]
                .into_iter()
                .filter_map(|side| match side {
                    SideVerdict::Denied { isolated_by } => Some((
                        Verdict::Denied,
                        isolated_by.iter().map(ToString::to_string).collect(),
                    )),
                    SideVerdict::AuditDenied { audited_by } => Some((
                        Verdict::AuditDenied,
                        audited_by.iter().map(ToString::to_string).collect(),
                    )),
                    _ => None,
                })
                .collect();
            if matches!(ingress, SideVerdict::Allowed { .. }) {
                allowed_by_rule += 1;
            }
            let got_reasons: Vec<(Verdict, Vec<String>)> = got
                .iter()
                .map(|e| {
                    let reason = reasons
                        .get(&e.tag)
                        .unwrap_or_else(|| panic!("unknown tag {}", e.tag));
                    assert_eq!((e.packet.dst, e.packet.dst_port), (dst, Some(service.0)));
                    (e.tag.verdict, reason.policies.clone())
                })
                .collect();
            assert_eq!(
                got_reasons, wanted,
                "{from} -> {to} {service:?} {family}: events {got:?}"
            );
            expected_events += wanted.len();
        }
    }
    assert!(
        expected_events >= 8,
        "the pairs exercise both kinds of event"
    );
    // The allowing rule counted every allowed probe (each one SYN: one new connection).
    let counters = enforcer.counters(1).expect("counters");
    let only_a = counters
        .allowed
        .iter()
        .find(|(o, _)| o.policy_name == "only-a")
        .map(|(_, c)| c.packets);
    assert_eq!(only_a, Some(allowed_by_rule), "{counters:?}");
    let audit_count: u64 = counters.audit_denied.values().map(|c| c.packets).sum();
    assert!(audit_count >= 2, "{counters:?}");

    // Enforcing the audited policy: one update, then its flows are dropped, as denials.
    let enforced = state(&lab, true);
    enforcer.enforce(&enforced).expect("apply enforce");
    let to_c = lab.pod_ip(&key("y/c"), IpFamily::V4).unwrap();
    let request =
        ProbeRequest::new(key("x/a"), to_c, TCP.0, TCP.1).with_timeout(Duration::from_millis(800));
    let (outcome, _) = lab
        .probe_many_traced(std::slice::from_ref(&request))
        .remove(0);
    assert_eq!(outcome, ProbeOutcome::TimedOut, "y/lockdown enforced");
    let got = collect(&mut sources, Duration::from_millis(300));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].tag.verdict, Verdict::Denied);

    flood_is_rate_limited(&lab, &mut sources, events, to_c);
}

/// 150 denied connection attempts within about a second, each a new flow: the events of
/// them stay within the kernel's limit (burst + rate x duration, with slack for the
/// timing), while an allowed probe still connects.
fn flood_is_rate_limited(
    lab: &Lab,
    sources: &mut [Box<dyn EventSource>],
    events: EventConfig,
    denied_to: IpAddr,
) {
    let started = Instant::now();
    let flood: Vec<ProbeRequest> = (0..150)
        .map(|_| {
            ProbeRequest::new(key("y/d"), denied_to, UDP.0, UDP.1)
                .with_timeout(Duration::from_millis(300))
        })
        .collect();
    let outcomes = lab.probe_many_traced(&flood);
    let flood_secs = started.elapsed().as_secs_f64();
    assert!(
        outcomes.iter().all(|(o, _)| *o == ProbeOutcome::TimedOut),
        "every flood probe is dropped"
    );
    let allowed = ProbeRequest::new(
        key("x/a"),
        lab.pod_ip(&key("x/b"), IpFamily::V4).unwrap(),
        TCP.0,
        TCP.1,
    );
    let (outcome, _) = lab
        .probe_many_traced(std::slice::from_ref(&allowed))
        .remove(0);
    assert_eq!(
        outcome,
        ProbeOutcome::Connected,
        "allowed traffic during a flood"
    );
    let got = collect(sources, Duration::from_millis(500));
    let bound = f64::from(events.burst) + f64::from(events.rate_per_second) * (flood_secs + 1.0);
    eprintln!(
        "flood: 150 denied attempts ({} datagrams) in {flood_secs:.2}s -> {} events (bound {bound:.0})",
        outcomes.iter().map(|(_, t)| t.sent.len()).sum::<usize>(),
        got.len()
    );
    assert!(!got.is_empty(), "a flood is reported");
    assert!(
        (got.len() as f64) <= bound,
        "{} events > {bound}",
        got.len()
    );
}
