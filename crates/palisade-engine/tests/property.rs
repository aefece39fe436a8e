//! Property tests: the indexed engine against independent oracles, on small random
//! clusters from `palisade_testkit::small_cluster` (few labels, so selectors collide;
//! ipBlocks around pod addresses; pods without addresses, hostNetwork and terminal pods).
//!
//! - engine verdicts and explanations == the plain reference evaluator;
//! - a state updated incrementally == a state built from the final objects;
//! - the compiled IR, run by a tiny dataplane interpreter == engine verdicts;
//! - `connlist` == `allows` on sampled ports inside and outside every allowed range.
//!
//! Each case is one seed. On failure the cluster is minimized (objects, then rules, peers
//! and ports removed while the failure persists) and printed, so the report is readable.
//! Cases: 2000 per property in debug builds, 20000 in release (`cargo test --release`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::IpAddr;

use palisade_engine::connlist::{connlist, external_blocks};
use palisade_engine::state::Change;
use palisade_engine::{ClusterState, Endpoint, Flow, PortRanges, SideVerdict};
use palisade_model::{
    Direction, IpBlock, IpFamily, Key, Namespace, NetworkPolicy, Object, Peer, Pod, PortSpec,
    Protocol,
};
use palisade_testkit::build::split;
use palisade_testkit::generate::small;
use palisade_testkit::{
    RefEndpoint, RefSide, ir_allows, ir_protocol, reference_explain, small_cluster,
};
use proptest::prelude::*;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cases() -> u32 {
    if cfg!(debug_assertions) { 2000 } else { 20000 }
}

fn config() -> ProptestConfig {
    // The input is a seed: shrinking it is meaningless, `minimize` does the real work.
    ProptestConfig {
        cases: cases(),
        max_shrink_iters: 0,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Live pods (not Succeeded/Failed), the last declaration of a key winning.
fn live_pods(objects: &[Object]) -> Vec<Pod> {
    let mut by_key: BTreeMap<Key, Pod> = BTreeMap::new();
    for o in objects {
        if let Object::Pod(p) = o {
            by_key.insert(p.key.clone(), p.clone());
        }
    }
    by_key
        .into_values()
        .filter(|p| !p.phase.is_terminal())
        .collect()
}

fn engine_endpoint(e: &RefEndpoint) -> Endpoint {
    match e {
        RefEndpoint::Pod(k) => Endpoint::Pod(k.clone()),
        RefEndpoint::Ip(ip) => Endpoint::Ip(*ip),
    }
}

fn family_of(ip: &IpAddr) -> IpFamily {
    IpFamily::of(ip)
}

/// The engine's side verdict in the reference's vocabulary.
fn as_ref_side(side: &SideVerdict) -> RefSide {
    match side {
        SideVerdict::External => RefSide::External,
        SideVerdict::HostNetwork => RefSide::HostNetwork,
        SideVerdict::SelfTraffic => RefSide::SelfTraffic,
        SideVerdict::NotIsolated => RefSide::NotIsolated,
        SideVerdict::AuditDenied { audited_by } => RefSide::AuditDenied {
            audited_by: audited_by.iter().cloned().collect(),
        },
        SideVerdict::Allowed {
            isolated_by,
            allowed_by,
        } => RefSide::Isolated {
            isolated_by: isolated_by.iter().cloned().collect(),
            allowed_by: allowed_by
                .iter()
                .map(|r| (r.policy.clone(), r.index))
                .collect(),
        },
        SideVerdict::Denied { isolated_by } => RefSide::Isolated {
            isolated_by: isolated_by.iter().cloned().collect(),
            allowed_by: BTreeSet::new(),
        },
    }
}

#[derive(Debug, Clone)]
struct Probe {
    src: RefEndpoint,
    dst: RefEndpoint,
    protocol: Protocol,
    port: u16,
    family: Option<IpFamily>,
}

impl Probe {
    fn flow(&self) -> Flow {
        Flow {
            src: engine_endpoint(&self.src),
            dst: engine_endpoint(&self.dst),
            protocol: self.protocol,
            port: self.port,
            family: self.family,
        }
    }
}

fn random_protocol(rng: &mut impl Rng) -> Protocol {
    *Protocol::ALL.choose(rng).expect("non-empty")
}

/// A port worth probing: one the generator uses, a neighbour, a declared container port
/// (the target of named ports), or anything.
fn random_port(rng: &mut impl Rng, pods: &[Pod]) -> u16 {
    match rng.random_range(0..10) {
        0..=5 => *small::PORTS.choose(rng).expect("non-empty"),
        6..=8 => pods
            .iter()
            .flat_map(|p| p.ports.iter().map(|cp| cp.port))
            .collect::<Vec<_>>()
            .choose(rng)
            .copied()
            .unwrap_or(80),
        _ => rng.random_range(0..=65535),
    }
}

/// `per_pair` flows between every ordered pair of live pods, plus pod->IP and IP->pod flows.
fn probes(rng: &mut impl Rng, pods: &[Pod], per_pair: usize) -> Vec<Probe> {
    let mut out = Vec::new();
    let fam = |rng: &mut ChaCha8Rng| match rng.random_range(0..3) {
        0 => None,
        1 => Some(IpFamily::V4),
        _ => Some(IpFamily::V6),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(rng.random());
    for a in pods {
        for b in pods {
            for _ in 0..per_pair {
                out.push(Probe {
                    src: RefEndpoint::Pod(a.key.clone()),
                    dst: RefEndpoint::Pod(b.key.clone()),
                    protocol: random_protocol(&mut rng),
                    port: random_port(&mut rng, pods),
                    family: fam(&mut rng),
                });
            }
        }
    }
    for _ in 0..2 * pods.len() {
        let pod = RefEndpoint::Pod(pods.choose(&mut rng).expect("pods").key.clone());
        let ip = small::probe_ips(&mut rng);
        let ip = RefEndpoint::Ip(ip);
        // With an IP endpoint the family is the IP's (given or derived).
        let family = match &ip {
            RefEndpoint::Ip(a) if rng.random_bool(0.5) => Some(family_of(a)),
            _ => None,
        };
        let (src, dst) = if rng.random_bool(0.5) {
            (pod, ip)
        } else {
            (ip, pod)
        };
        out.push(Probe {
            src,
            dst,
            protocol: random_protocol(&mut rng),
            port: random_port(&mut rng, pods),
            family,
        });
    }
    out
}

/// Greedily shrinks a failing cluster: drops objects, then policy rules, peers and ports,
/// while `fails` still reports a failure. Returns the smallest cluster and its failure.
fn minimize(
    objects: Vec<Object>,
    fails: impl Fn(&[Object]) -> Option<String>,
) -> (Vec<Object>, String) {
    let mut current = objects;
    let mut why = fails(&current).expect("minimize starts from a failing cluster");
    let try_replace = |current: &mut Vec<Object>, candidate: Vec<Object>, why: &mut String| {
        if let Some(w) = fails(&candidate) {
            *current = candidate;
            *why = w;
            true
        } else {
            false
        }
    };
    loop {
        let mut progress = false;
        let mut i = 0;
        while i < current.len() {
            let mut candidate = current.clone();
            candidate.remove(i);
            if !try_replace(&mut current, candidate, &mut why) {
                i += 1;
            } else {
                progress = true;
            }
        }
        for i in 0..current.len() {
            let Object::NetworkPolicy(p) = &current[i] else {
                continue;
            };
            let p = p.clone();
            for variant in policy_reductions(&p) {
                let mut candidate = current.clone();
                candidate[i] = Object::NetworkPolicy(variant);
                if try_replace(&mut current, candidate, &mut why) {
                    progress = true;
                    break;
                }
            }
        }
        if !progress {
            return (current, why);
        }
    }
}

/// One-step simplifications of a policy.
fn policy_reductions(p: &NetworkPolicy) -> Vec<NetworkPolicy> {
    let mut out = Vec::new();
    for d in Direction::BOTH {
        let rules = p.rules(d);
        for (r, rule) in rules.iter().enumerate() {
            let mut q = p.clone();
            rules_mut(&mut q, d).remove(r);
            out.push(q);
            for i in 0..rule.peers.len() {
                let mut q = p.clone();
                rules_mut(&mut q, d)[r].peers.remove(i);
                out.push(q);
            }
            for i in 0..rule.ports.len() {
                let mut q = p.clone();
                rules_mut(&mut q, d)[r].ports.remove(i);
                out.push(q);
            }
        }
    }
    if !p.pod_selector.is_everything() {
        let mut q = p.clone();
        q.pod_selector = Default::default();
        out.push(q);
    }
    out
}

fn rules_mut(p: &mut NetworkPolicy, d: Direction) -> &mut Vec<palisade_model::Rule> {
    match d {
        Direction::Ingress => &mut p.ingress,
        Direction::Egress => &mut p.egress,
    }
}

fn show(objects: &[Object]) -> String {
    objects.iter().map(|o| format!("  {o:?}\n")).collect()
}

/// Runs a check; on failure, minimizes the cluster and fails the case with both.
fn check(
    seed: u64,
    objects: Vec<Object>,
    run: impl Fn(&[Object]) -> Option<String>,
) -> Result<(), TestCaseError> {
    if run(&objects).is_none() {
        return Ok(());
    }
    let (small, why) = minimize(objects, run);
    Err(TestCaseError::fail(format!(
        "seed {seed}: {why}\nminimized cluster ({} objects):\n{}",
        small.len(),
        show(&small)
    )))
}

fn first_mismatch<T: PartialEq + Debug>(what: &str, a: T, b: T) -> Option<String> {
    (a != b).then(|| format!("{what}:\n  engine:    {a:?}\n  reference: {b:?}"))
}

// ---------------------------------------------------------------------------------------
// 1. engine == reference

fn engine_vs_reference(seed: u64, objects: &[Object]) -> Option<String> {
    let state = ClusterState::from_objects(objects);
    let (namespaces, pods, policies) = split(objects);
    let live = live_pods(objects);
    if live.is_empty() {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    for probe in probes(&mut rng, &live, 3) {
        let engine = state.explain(&probe.flow());
        let reference = reference_explain(
            &namespaces,
            &pods,
            &policies,
            &probe.src,
            &probe.dst,
            probe.protocol,
            probe.port,
            probe.family,
        );
        let (engine, reference) = match (engine, reference) {
            (Ok(e), Ok(r)) => (e, r),
            (Err(_), Err(_)) => continue,
            (e, r) => return Some(format!("{probe:?}: engine {e:?}, reference {r:?}")),
        };
        let e = (
            engine.family,
            as_ref_side(&engine.egress),
            as_ref_side(&engine.ingress),
        );
        let r = (
            reference.family,
            reference.egress.clone(),
            reference.ingress.clone(),
        );
        if let Some(m) = first_mismatch(&format!("{probe:?}"), e, r) {
            return Some(m);
        }
        if engine.allowed() != reference.allowed() {
            return Some(format!("{probe:?}: allowed differs"));
        }
    }
    None
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn engine_matches_reference(seed in any::<u64>()) {
        check(seed, small_cluster(seed), |objects| engine_vs_reference(seed, objects))?;
    }
}

// ---------------------------------------------------------------------------------------
// 2. incremental == from scratch

#[derive(Debug, Clone)]
enum Op {
    Apply(Object),
    DeletePod(Key),
    DeletePolicy(Key),
    DeleteNamespace(String),
}

fn random_ops(rng: &mut ChaCha8Rng, initial: &[Object]) -> Vec<Op> {
    let mut known_pods: Vec<(usize, usize)> = initial
        .iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some((
                small::NAMESPACES
                    .iter()
                    .position(|n| *n == p.key.namespace)
                    .expect("ns"),
                p.key.name[1..].parse().expect("slot"),
            )),
            _ => None,
        })
        .collect();
    let mut ops = Vec::new();
    for _ in 0..rng.random_range(5..=25) {
        let op = match rng.random_range(0..20) {
            // Re-create or change a pod (relabel, new ports, address, phase, node).
            0..=6 => {
                let (ns, slot) = match known_pods.choose(rng) {
                    Some(&id) if rng.random_bool(0.6) => id,
                    _ => (rng.random_range(0..3), rng.random_range(0..9)),
                };
                known_pods.push((ns, slot));
                Op::Apply(Object::Pod(small::pod(rng, ns, slot)))
            }
            7 | 8 => {
                let (ns, slot) = known_pods
                    .choose(rng)
                    .copied()
                    .unwrap_or((rng.random_range(0..3), rng.random_range(0..9)));
                Op::DeletePod(Key::new(small::NAMESPACES[ns], format!("p{slot}")))
            }
            9..=12 => {
                let ns = small::NAMESPACES[rng.random_range(0..3)];
                let name = format!("np{}", rng.random_range(0..8));
                Op::Apply(Object::NetworkPolicy(small::policy(rng, ns, &name)))
            }
            13 | 14 => Op::DeletePolicy(Key::new(
                small::NAMESPACES[rng.random_range(0..3)],
                format!("np{}", rng.random_range(0..8)),
            )),
            15 | 16 => {
                let ns = small::NAMESPACES[rng.random_range(0..3)];
                Op::Apply(Object::Namespace(small::namespace(rng, ns)))
            }
            17 => Op::DeleteNamespace(small::NAMESPACES[rng.random_range(0..3)].to_string()),
            // Re-apply something already applied: must be a no-op.
            _ => match initial.choose(rng) {
                Some(o) => Op::Apply(o.clone()),
                None => continue,
            },
        };
        ops.push(op);
    }
    ops
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ObjKey {
    Namespace(String),
    Pod(Key),
    Policy(Key),
}

fn obj_key(o: &Object) -> ObjKey {
    match o {
        Object::Namespace(n) => ObjKey::Namespace(n.name.clone()),
        Object::Pod(p) => ObjKey::Pod(p.key.clone()),
        Object::NetworkPolicy(p) => ObjKey::Policy(p.key.clone()),
    }
}

/// Everything observable about a state, for comparison; `derived` adds what is computed
/// from the indexes (verdicts of `probes`, node IR, connlist).
fn observe(state: &ClusterState, probes: &[Probe], derived: bool) -> Vec<String> {
    let mut out = Vec::new();
    out.push(format!("namespaces {:?}", state.namespace_names()));
    for ns in state.namespace_names() {
        out.push(format!("ns {ns} {:?}", state.namespace_labels(ns)));
    }
    for pod in state.pods() {
        let selecting: Vec<&Key> = state.policies_selecting(&pod.key).map(|p| &p.key).collect();
        out.push(format!("pod {pod:?} selected by {selecting:?}"));
    }
    for policy in state.policies() {
        let selected: Vec<&Key> = state
            .pods_selected_by(&policy.key)
            .map(|p| &p.key)
            .collect();
        out.push(format!("policy {} selects {selected:?}", policy.key));
    }
    if !derived {
        return out;
    }
    for probe in probes {
        out.push(format!("{probe:?} -> {:?}", state.explain(&probe.flow())));
    }
    for node in small::NODES {
        out.push(format!("node {node}: {:?}", state.compile_node(node)));
    }
    out.push(format!("connlist {:?}", connlist(state)));
    out
}

fn incremental_vs_scratch(seed: u64, initial: &[Object]) -> Option<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1c4e);
    let ops = random_ops(&mut rng, initial);
    let mut state = ClusterState::from_objects(initial);
    let mut current: BTreeMap<ObjKey, Object> =
        initial.iter().map(|o| (obj_key(o), o.clone())).collect();
    for op in &ops {
        match op {
            Op::Apply(o) => {
                let before = state.clone();
                let change = state.apply(o.clone());
                // Change::Unchanged must mean exactly that.
                if change == Change::Unchanged
                    && observe(&before, &[], false) != observe(&state, &[], false)
                {
                    return Some(format!("apply {o:?} said Unchanged but changed the state"));
                }
                current.insert(obj_key(o), o.clone());
            }
            Op::DeletePod(k) => {
                state.delete_pod(k);
                current.remove(&ObjKey::Pod(k.clone()));
            }
            Op::DeletePolicy(k) => {
                state.delete_policy(k);
                current.remove(&ObjKey::Policy(k.clone()));
            }
            Op::DeleteNamespace(n) => {
                state.delete_namespace(n);
                current.remove(&ObjKey::Namespace(n.clone()));
            }
        }
    }
    let finals: Vec<Object> = current.into_values().collect();
    let scratch = ClusterState::from_objects(&finals);
    let live = live_pods(&finals);
    let probes = if live.is_empty() {
        Vec::new()
    } else {
        probes(&mut rng, &live, 1)
    };
    let (a, b) = (
        observe(&state, &probes, true),
        observe(&scratch, &probes, true),
    );
    for (x, y) in a.iter().zip(&b) {
        if x != y {
            return Some(format!(
                "after {ops:#?}\nincremental: {x}\nfrom scratch: {y}"
            ));
        }
    }
    if a.len() != b.len() {
        return Some(format!("after {ops:#?}\nobservation lengths differ"));
    }
    // And the final state still agrees with the reference.
    engine_vs_reference(seed, &finals).map(|why| format!("after {ops:#?}\n{why}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn incremental_matches_from_scratch(seed in any::<u64>()) {
        check(seed, small_cluster(seed), |objects| incremental_vs_scratch(seed, objects))?;
    }
}

// ---------------------------------------------------------------------------------------
// 3. IR (as a dataplane runs it) == engine

/// Endpoints a dataplane sees by address: pods (enforced ones, hostNetwork ones) and
/// addresses no live pod holds.
fn ir_vs_engine(seed: u64, objects: &[Object]) -> Option<String> {
    let state = ClusterState::from_objects(objects);
    let rulesets: Vec<_> = small::NODES.iter().map(|n| state.compile_node(n)).collect();
    let live = live_pods(objects);
    let held: BTreeSet<IpAddr> = state.pods().iter().flat_map(|p| p.ips.clone()).collect();
    // Pods whose address a dataplane can see: enforced pods (on a node, with an address)
    // and hostNetwork pods (their node's address).
    let pods: Vec<&Pod> = state
        .pods()
        .into_iter()
        .filter(|p| !p.ips.is_empty() && (p.host_network || p.node.is_some()))
        .collect();
    let _ = live;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x12);
    let mut endpoints: Vec<(Endpoint, Vec<IpAddr>)> = pods
        .iter()
        .map(|p| (Endpoint::Pod(p.key.clone()), p.ips.clone()))
        .collect();
    for _ in 0..3 {
        let ip = small::probe_ips(&mut rng);
        if !held.contains(&ip) {
            endpoints.push((Endpoint::Ip(ip), vec![ip]));
        }
    }
    let named: Vec<u16> = state
        .pods()
        .iter()
        .flat_map(|p| p.ports.iter().map(|c| c.port))
        .collect();
    for (src, src_ips) in &endpoints {
        for (dst, dst_ips) in &endpoints {
            // A pod's traffic to itself is compared too: the IR's executable meaning never
            // judges it, and the engine allows it.
            if matches!((src, dst), (Endpoint::Ip(_), Endpoint::Ip(_))) {
                continue;
            }
            for family in [IpFamily::V4, IpFamily::V6] {
                let s = src_ips.iter().find(|ip| family_of(ip) == family);
                let d = dst_ips.iter().find(|ip| family_of(ip) == family);
                let (Some(s), Some(d)) = (s, d) else { continue };
                for _ in 0..4 {
                    let protocol = random_protocol(&mut rng);
                    let port = if rng.random_bool(0.3) {
                        named.choose(&mut rng).copied().unwrap_or(80)
                    } else {
                        *small::PORTS.choose(&mut rng).expect("non-empty")
                    };
                    let flow = Flow {
                        src: src.clone(),
                        dst: dst.clone(),
                        protocol,
                        port,
                        family: Some(family),
                    };
                    let engine = state.explain(&flow).expect("known endpoints");
                    let ir = ir_allows(&rulesets, *s, *d, ir_protocol(protocol), port);
                    if engine.allowed() != ir {
                        return Some(format!(
                            "{src} ({s}) -> {dst} ({d}) {port}/{protocol}: engine {}, IR {}\n{engine}",
                            engine.allowed(),
                            ir
                        ));
                    }
                }
            }
        }
    }
    None
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ir_matches_engine(seed in any::<u64>()) {
        check(seed, small_cluster(seed), |objects| ir_vs_engine(seed, objects))?;
    }
}

// ---------------------------------------------------------------------------------------
// 4. connlist == allows

/// The families a pair of pods is evaluated in, as `connlist` documents it: the families
/// both have; a pod without any address is assumed to have every family of its peer;
/// neither has one: a family in which ipBlocks match nothing (no address).
fn pair_families(a: &Pod, b: &Pod) -> Vec<IpFamily> {
    let fams = |p: &Pod| -> BTreeSet<IpFamily> { p.ips.iter().map(family_of).collect() };
    let (fa, fb) = (fams(a), fams(b));
    match (fa.is_empty(), fb.is_empty()) {
        (true, true) => vec![IpFamily::V4],
        (true, false) => fb.into_iter().collect(),
        (false, true) => fa.into_iter().collect(),
        (false, false) => fa.intersection(&fb).copied().collect(),
    }
}

/// Ports to sample for one protocol: around every boundary of `allowed`, plus a few of the
/// usual ones.
fn sample_ports(allowed: &PortRanges, protocol: Protocol, rng: &mut impl Rng) -> Vec<u16> {
    let mut ports: BTreeSet<u16> = small::PORTS.choose_multiple(rng, 3).copied().collect();
    ports.insert(rng.random_range(0..=65535));
    for (p, a, b) in allowed.iter() {
        if p != protocol {
            continue;
        }
        ports.extend([a, b, a.saturating_sub(1), b.saturating_add(1)]);
        ports.insert(rng.random_range(a..=b));
    }
    ports.into_iter().collect()
}

fn all_blocks(state: &ClusterState) -> Vec<IpBlock> {
    let mut blocks = BTreeSet::new();
    for policy in state.policies() {
        for d in Direction::BOTH {
            for rule in policy.rules(d) {
                for peer in &rule.peers {
                    if let Peer::IpBlock(b) = peer {
                        blocks.insert(b.clone());
                    }
                }
            }
        }
    }
    blocks.into_iter().collect()
}

fn connlist_vs_allows(seed: u64, objects: &[Object]) -> Option<String> {
    let state = ClusterState::from_objects(objects);
    let list = connlist(&state);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc0);
    let mut listed: BTreeMap<(String, String), PortRanges> = BTreeMap::new();
    for c in &list {
        if listed
            .insert((c.src.clone(), c.dst.clone()), c.allowed.clone())
            .is_some()
        {
            return Some(format!("{} -> {} listed twice", c.src, c.dst));
        }
    }
    let none = PortRanges::none();
    let allows = |flow: Flow| state.allows(&flow).expect("known endpoints");
    let pods = state.pods();
    for a in &pods {
        for b in &pods {
            if a.key == b.key {
                continue;
            }
            let key = (a.key.to_string(), b.key.to_string());
            let allowed = listed.remove(&key).unwrap_or_else(|| none.clone());
            for protocol in Protocol::ALL {
                for port in sample_ports(&allowed, protocol, &mut rng) {
                    let expected = pair_families(a, b).into_iter().any(|family| {
                        allows(Flow {
                            src: Endpoint::Pod(a.key.clone()),
                            dst: Endpoint::Pod(b.key.clone()),
                            protocol,
                            port,
                            family: Some(family),
                        })
                    });
                    if allowed.contains(protocol, port) != expected {
                        return Some(format!(
                            "{} -> {} {port}/{protocol}: connlist says {allowed}, allows says {expected}",
                            key.0, key.1
                        ));
                    }
                }
            }
        }
    }
    // External endpoints: each piece of address space the ipBlocks cut out.
    let blocks = all_blocks(&state);
    let block_refs: Vec<&IpBlock> = blocks.iter().collect();
    let nets = external_blocks(&block_refs);
    // Every listed piece must be one of them; 8 of them (27 on average) are checked.
    let known: BTreeSet<String> = nets.iter().map(ToString::to_string).collect();
    let (mut external, unknown): (BTreeMap<_, _>, BTreeMap<_, _>) = listed
        .into_iter()
        .partition(|((s, d), _)| known.contains(s) || known.contains(d));
    if let Some(((s, d), _)) = unknown.into_iter().next() {
        return Some(format!(
            "connlist lists {s} -> {d}, which is no pod pair or external block"
        ));
    }
    for net in nets.choose_multiple(&mut rng, 8) {
        let family = family_of(&net.network());
        for pod in &pods {
            if !pod.ips.is_empty() && pod.ip(family).is_none() {
                continue;
            }
            for (forward, key) in [
                (true, (pod.key.to_string(), net.to_string())),
                (false, (net.to_string(), pod.key.to_string())),
            ] {
                let allowed = external.remove(&key).unwrap_or_else(|| none.clone());
                // Any address of the piece stands for all of it; pieces are many (a /0
                // minus a /32 is 32 of them), so one protocol each.
                let ip = if rng.random_bool(0.5) {
                    net.network()
                } else {
                    net.broadcast()
                };
                let protocol = random_protocol(&mut rng);
                for port in sample_ports(&allowed, protocol, &mut rng) {
                    let (src, dst) = if forward {
                        (Endpoint::Pod(pod.key.clone()), Endpoint::Ip(ip))
                    } else {
                        (Endpoint::Ip(ip), Endpoint::Pod(pod.key.clone()))
                    };
                    let expected = allows(Flow {
                        src,
                        dst,
                        protocol,
                        port,
                        family: Some(family),
                    });
                    if allowed.contains(protocol, port) != expected {
                        return Some(format!(
                            "{} -> {} (at {ip}) {port}/{protocol}: connlist says {allowed}, \
                             allows says {expected}",
                            key.0, key.1
                        ));
                    }
                }
            }
        }
    }
    None
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn connlist_matches_allows(seed in any::<u64>()) {
        check(seed, small_cluster(seed), |objects| connlist_vs_allows(seed, objects))?;
    }
}

// Keep the generators honest: the interesting shapes do occur.
#[test]
fn small_clusters_cover_the_interesting_shapes() {
    let mut seen = BTreeSet::new();
    for seed in 0..500 {
        for o in small_cluster(seed) {
            match o {
                Object::Pod(p) => {
                    seen.insert(if p.ips.is_empty() {
                        "pod without IP"
                    } else {
                        "pod with IP"
                    });
                    if p.ips.len() == 2 {
                        seen.insert("dual-stack pod");
                    }
                    if p.host_network {
                        seen.insert("hostNetwork pod");
                    }
                    if p.phase.is_terminal() {
                        seen.insert("terminal pod");
                    }
                    if p.node.is_none() {
                        seen.insert("pod on no node");
                    }
                }
                Object::NetworkPolicy(p) => {
                    for d in Direction::BOTH {
                        for r in p.rules(d) {
                            if r.peers.is_empty() {
                                seen.insert("rule without peers");
                            }
                            for peer in &r.peers {
                                seen.insert(match peer {
                                    Peer::IpBlock(b) if !b.except.is_empty() => {
                                        "ipBlock with except"
                                    }
                                    Peer::IpBlock(_) => "ipBlock",
                                    Peer::Pods {
                                        namespace_selector: Some(_),
                                        pod_selector: Some(_),
                                    } => "both selectors",
                                    Peer::Pods {
                                        namespace_selector: Some(_),
                                        ..
                                    } => "namespaceSelector",
                                    Peer::Pods { .. } => "podSelector",
                                });
                            }
                            for pm in &r.ports {
                                seen.insert(match pm.port {
                                    PortSpec::Named(_) => "named port",
                                    PortSpec::Range { from, to } if from != to => "port range",
                                    PortSpec::Range { .. } => "numeric port",
                                    PortSpec::Any => "protocol only",
                                });
                            }
                        }
                    }
                    if !p.pod_selector.match_expressions.is_empty() {
                        seen.insert("matchExpressions");
                    }
                }
                Object::Namespace(Namespace { .. }) => {
                    seen.insert("namespace");
                }
            }
        }
    }
    assert_eq!(seen.len(), 18, "{seen:?}");
}
