//! The agent's incremental compile (a persistent `PeerCache`, told of every pod and
//! namespace change) must produce exactly what a compile from scratch produces.

use std::collections::BTreeSet;

use palisade_engine::ClusterState;
use palisade_engine::ir::PeerCache;
use palisade_model::{Key, Object};
use palisade_testkit::generate::small_cluster;

/// Applies one change the way the agent's controller does: cache first, then state.
fn apply(state: &mut ClusterState, cache: &mut PeerCache, object: Object) {
    match &object {
        Object::Pod(p) => {
            let old = state.pod(&p.key).cloned();
            cache.pod_changed(state, old.as_ref(), Some(p));
        }
        Object::Namespace(_) => cache.namespaces_changed(),
        Object::NetworkPolicy(_) => {}
    }
    state.apply(object);
}

fn delete(state: &mut ClusterState, cache: &mut PeerCache, object: &Object) {
    match object {
        Object::Pod(p) => {
            let old = state.pod(&p.key).cloned();
            cache.pod_changed(state, old.as_ref(), None);
            state.delete_pod(&p.key);
        }
        Object::Namespace(n) => {
            cache.namespaces_changed();
            state.delete_namespace(&n.name);
        }
        Object::NetworkPolicy(p) => {
            state.delete_policy(&p.key);
        }
    }
}

fn nodes(state: &ClusterState) -> BTreeSet<String> {
    state.pods().iter().filter_map(|p| p.node.clone()).collect()
}

fn check(state: &ClusterState, cache: &mut PeerCache, context: &str) {
    for node in nodes(state) {
        let scratch = state.compile_node(&node);
        let incremental = state.compile_node_with(&node, cache);
        assert_eq!(incremental, scratch, "{context}: node {node}");
    }
}

#[test]
fn incremental_compile_equals_scratch_over_random_change_sequences() {
    for seed in 0..400u64 {
        let first = small_cluster(seed);
        let second = small_cluster(seed + 1_000_000);
        let mut state = ClusterState::new();
        let mut cache = PeerCache::default();
        for o in first.clone() {
            apply(&mut state, &mut cache, o);
        }
        check(&state, &mut cache, &format!("seed {seed} initial"));
        // Objects of the first cluster that the second lacks are deleted, the rest is
        // upserted: relabels, new addresses (some taken over from other pods), new policies.
        let second_keys: BTreeSet<String> = second.iter().map(object_key).collect();
        for (step, o) in first
            .iter()
            .filter(|o| !second_keys.contains(&object_key(o)))
            .enumerate()
        {
            delete(&mut state, &mut cache, o);
            check(&state, &mut cache, &format!("seed {seed} delete {step}"));
        }
        for (step, o) in second.into_iter().enumerate() {
            apply(&mut state, &mut cache, o);
            check(&state, &mut cache, &format!("seed {seed} upsert {step}"));
        }
    }
}

fn object_key(o: &Object) -> String {
    match o {
        Object::Namespace(n) => format!("ns {}", n.name),
        Object::Pod(p) => format!("pod {}", p.key),
        Object::NetworkPolicy(p) => format!("np {}", Key::to_string(&p.key)),
    }
}

/// §10: a new pod reporting the address of a pod whose delete has not arrived takes it
/// over; the cached peer set holding the old pod's address must drop it.
#[test]
fn an_address_taken_over_leaves_the_cached_sets() {
    use palisade_testkit::build::{pod, pods, policy, rule, sel};
    let mut state = ClusterState::new();
    let mut cache = PeerCache::default();
    let objects = [
        Object::Pod(
            pod("ns", "server")
                .label("app", "server")
                .ip("10.0.0.9")
                .node("n1")
                .build(),
        ),
        Object::Pod(
            pod("ns", "old")
                .label("app", "client")
                .ip("10.0.0.1")
                .node("n2")
                .build(),
        ),
        Object::NetworkPolicy(
            policy("ns", "from-client")
                .select(sel(&[("app", "server")]))
                .ingress(rule().from(pods(sel(&[("app", "client")]))).build())
                .build(),
        ),
    ];
    for o in objects {
        apply(&mut state, &mut cache, o);
    }
    check(&state, &mut cache, "before");
    let newcomer = pod("ns", "new")
        .label("app", "other")
        .ip("10.0.0.1")
        .node("n2")
        .build();
    apply(&mut state, &mut cache, Object::Pod(newcomer));
    check(&state, &mut cache, "after the takeover");
    let rs = state.compile_node_with("n1", &mut cache);
    assert!(
        rs.peer_sets.values().all(|s| s.is_empty()),
        "10.0.0.1 now belongs to a pod the policy does not allow: {:?}",
        rs.peer_sets
    );
}
