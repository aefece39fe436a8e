//! The engine state a long-running consumer (the node agent) keeps: the indexed
//! [`ClusterState`] plus the [`PeerCache`] that makes a node compile cost what changed.
//! Every change goes through here, so the cache is always told what it must forget, and
//! the consumer only forwards events.

use std::collections::BTreeSet;

use palisade_ir::NodeRuleset;
use palisade_model::{Key, Object};

use crate::ClusterState;
use crate::ir::PeerCache;

/// The object kinds the engine keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    pub fn of(object: &Object) -> Kind {
        match object {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }
}

/// [`ClusterState`] with a persistent [`PeerCache`], kept in step.
#[derive(Debug, Default)]
pub struct LiveState {
    state: ClusterState,
    peers: PeerCache,
}

impl LiveState {
    pub fn new() -> LiveState {
        LiveState::default()
    }

    /// Starts from a state built elsewhere (the cache fills as nodes compile).
    pub fn from_state(state: ClusterState) -> LiveState {
        LiveState {
            state,
            peers: PeerCache::default(),
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn into_state(self) -> ClusterState {
        self.state
    }

    /// Creates or replaces one object.
    pub fn apply(&mut self, object: Object) {
        match &object {
            Object::Pod(new) => {
                let old = self.state.pod(&new.key).cloned();
                self.peers.pod_changed(&self.state, old.as_ref(), Some(new));
            }
            Object::Namespace(_) => self.peers.namespaces_changed(),
            Object::NetworkPolicy(_) => {}
        }
        self.state.apply(object);
    }

    /// Deletes one object; a namespace is `Key { namespace: "", name }`.
    pub fn delete(&mut self, kind: Kind, key: &Key) {
        match kind {
            Kind::Namespace => self.peers.namespaces_changed(),
            Kind::Pod => {
                let old = self.state.pod(key).cloned();
                self.peers.pod_changed(&self.state, old.as_ref(), None);
            }
            Kind::NetworkPolicy => {}
        }
        self.state_delete(kind, key);
    }

    fn state_delete(&mut self, kind: Kind, key: &Key) {
        match kind {
            Kind::Namespace => self.state.delete_namespace(&key.name),
            Kind::Pod => self.state.delete_pod(key),
            Kind::NetworkPolicy => self.state.delete_policy(key),
        };
    }

    /// Makes `objects` the complete set of `kind` (a list or re-list): objects of that
    /// kind not in it are deleted, the others applied.
    pub fn reset_kind(&mut self, kind: Kind, objects: Vec<Object>) {
        let keep: BTreeSet<Key> = objects
            .iter()
            .map(|o| match o {
                Object::Namespace(n) => Key::new("", &n.name),
                Object::Pod(p) => p.key.clone(),
                Object::NetworkPolicy(p) => p.key.clone(),
            })
            .collect();
        let gone: Vec<Key> = match kind {
            Kind::Namespace => self
                .state
                .declared_namespaces()
                .map(|n| Key::new("", n))
                .collect(),
            Kind::Pod => self.state.pods().iter().map(|p| p.key.clone()).collect(),
            Kind::NetworkPolicy => self
                .state
                .policies()
                .iter()
                .map(|p| p.key.clone())
                .collect(),
        };
        for key in gone.into_iter().filter(|k| !keep.contains(k)) {
            self.state_delete(kind, &key);
        }
        for object in objects {
            self.state.apply(object);
        }
        // A whole kind replaced: cheaper to start the cache over than to track each change.
        self.peers.clear();
    }

    /// The IR of `node`, reusing what the cache still knows.
    pub fn compile_node(&mut self, node: &str) -> NodeRuleset {
        self.state.compile_node_with(node, &mut self.peers)
    }
}

#[cfg(test)]
mod tests {
    use palisade_model::{Labels, Namespace, Pod};

    use super::*;

    fn pod(name: &str, app: &str, ip: &str) -> Object {
        let mut pod = Pod::new(
            "default",
            name,
            Labels::from([("app".to_string(), app.to_string())]),
        );
        pod.ips = vec![ip.parse().unwrap()];
        pod.node = Some("n1".into());
        Object::Pod(pod)
    }

    #[test]
    fn reset_kind_deletes_what_the_list_lacks_and_compiles_like_scratch() {
        let mut live = LiveState::new();
        live.apply(Object::Namespace(Namespace {
            name: "default".into(),
            labels: Labels::new(),
        }));
        live.apply(pod("a", "x", "10.0.0.1"));
        live.apply(pod("b", "x", "10.0.0.2"));
        live.compile_node("n1");
        live.reset_kind(
            Kind::Pod,
            vec![pod("b", "y", "10.0.0.2"), pod("c", "x", "10.0.0.3")],
        );
        let keys: Vec<String> = live
            .state()
            .pods()
            .iter()
            .map(|p| p.key.to_string())
            .collect();
        assert_eq!(keys, ["default/b", "default/c"]);
        assert_eq!(live.compile_node("n1"), live.state().compile_node("n1"));
        live.delete(Kind::Pod, &Key::new("default", "c"));
        assert_eq!(live.compile_node("n1"), live.state().compile_node("n1"));
    }
}
