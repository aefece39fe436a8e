//! Engine benchmarks on seeded clusters from `palisade_testkit::generate_cluster`
//! (figures and targets in BENCHMARKS.md, section "Engine").
//!
//! ```text
//! cargo bench -p palisade-engine --bench engine -- --warm-up-time 1 --measurement-time 5
//! ```
//!
//! - `build`: a ClusterState of 10,000 pods in 500 namespaces with 5,000 policies.
//! - `update`: one incremental change on that state: a pod relabel that changes which
//!   policies select it, a policy add. Only the change is timed (`iter_custom`); undoing it
//!   between iterations is not.
//! - `connlist`: connectivity of 2,000 workloads without addresses (as from manifests).
//! - `baseline`: for ratios, in the same run: cloning the generated objects (what any
//!   build must at least do) and the plain reference evaluator against the engine on the
//!   same 100 flows.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use palisade_engine::connlist::connlist;
use palisade_engine::{ClusterState, Endpoint, Flow};
use palisade_model::{Key, Object, Pod, Protocol};
use palisade_testkit::build::{pods, policy, rule, sel, split, tcp};
use palisade_testkit::{GenParams, RefEndpoint, generate_cluster, reference_allows};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn large() -> Vec<Object> {
    generate_cluster(42, GenParams::large())
}

fn build(c: &mut Criterion) {
    let objects = large();
    let mut g = c.benchmark_group("build");
    g.sample_size(20);
    g.bench_function("10k_pods_500_ns_5k_policies", |b| {
        b.iter(|| ClusterState::from_objects(black_box(&objects)))
    });
    g.finish();
    let mut g = c.benchmark_group("baseline");
    g.sample_size(20);
    g.bench_function("clone_10k_objects", |b| {
        b.iter(|| black_box(&objects).clone())
    });
    g.finish();
}

/// A running pod of the large cluster whose namespace has policies selecting by `app`.
fn relabel_target(state: &ClusterState) -> (Pod, Pod) {
    let pod = state
        .pods()
        .into_iter()
        .find(|p| !p.host_network && state.policies_selecting(&p.key).count() >= 2)
        .expect("a selected pod")
        .clone();
    let mut relabeled = pod.clone();
    relabeled.labels.insert("app".into(), "relabeled".into());
    relabeled.labels.insert("tier".into(), "frontend".into());
    (pod, relabeled)
}

fn update(c: &mut Criterion) {
    let objects = large();
    let mut state = ClusterState::from_objects(&objects);
    let mut g = c.benchmark_group("update");
    let (original, relabeled) = relabel_target(&state);
    let before = state.policies_selecting(&original.key).count();
    state.apply(Object::Pod(relabeled.clone()));
    let after = state.policies_selecting(&original.key).count();
    assert_ne!(
        before, after,
        "the relabel changes which policies select the pod"
    );
    state.apply(Object::Pod(original.clone()));
    g.bench_function("pod_relabel", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let change = Object::Pod(relabeled.clone());
                let start = Instant::now();
                black_box(state.apply(change));
                total += start.elapsed();
                state.apply(Object::Pod(original.clone()));
            }
            total
        })
    });
    let ns = original.key.namespace.clone();
    let new_policy = policy(&ns, "bench-allow-frontends")
        .select(sel(&[("tier", "backend")]))
        .ingress(
            rule()
                .from(pods(sel(&[("tier", "frontend")])))
                .port(tcp(8080)),
        )
        .build();
    let key = new_policy.key.clone();
    g.bench_function("policy_add", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let change = Object::NetworkPolicy(new_policy.clone());
                let start = Instant::now();
                black_box(state.apply(change));
                total += start.elapsed();
                state.delete_policy(&key);
            }
            total
        })
    });
    g.finish();

    // Baseline: the plain reference evaluator (no indexes) against the engine, same flows.
    let (namespaces, all_pods, policies) = split(&objects);
    let live: Vec<&Pod> = state.pods();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let flows: Vec<(Key, Key, u16)> = (0..100)
        .map(|_| {
            let a = live.choose(&mut rng).expect("pods");
            let b = live.choose(&mut rng).expect("pods");
            let port = b.ports.choose(&mut rng).map_or(8080, |p| p.port);
            (
                a.key.clone(),
                b.key.clone(),
                if rng.random_bool(0.8) { port } else { 9999 },
            )
        })
        .collect();
    let mut g = c.benchmark_group("baseline");
    g.sample_size(20);
    g.bench_function("engine_100_flows", |b| {
        b.iter(|| {
            flows
                .iter()
                .filter(|(s, d, port)| {
                    let flow = Flow {
                        src: Endpoint::Pod(s.clone()),
                        dst: Endpoint::Pod(d.clone()),
                        protocol: Protocol::Tcp,
                        port: *port,
                        family: None,
                    };
                    state.allows(&flow).expect("known pods")
                })
                .count()
        })
    });
    g.bench_function("reference_100_flows", |b| {
        b.iter(|| {
            flows
                .iter()
                .filter(|(s, d, port)| {
                    reference_allows(
                        &namespaces,
                        &all_pods,
                        &policies,
                        &RefEndpoint::Pod(s.clone()),
                        &RefEndpoint::Pod(d.clone()),
                        Protocol::Tcp,
                        *port,
                        None,
                    )
                })
                .count()
        })
    });
    g.finish();
}

fn connectivity(c: &mut Criterion) {
    let state = ClusterState::from_objects(&generate_cluster(7, GenParams::workloads(2_000)));
    let mut g = c.benchmark_group("connlist");
    g.sample_size(10);
    g.bench_function("2000_workloads", |b| b.iter(|| connlist(black_box(&state))));
    g.finish();
}

criterion_group!(benches, build, update, connectivity);
criterion_main!(benches);
