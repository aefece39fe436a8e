//! The indexed cluster state: namespaces, pods and policies, with the indexes that make a
//! change cost only what it affects (policy -> selected pods, pod -> selecting policies).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use palisade_model::{Key, Labels, Namespace, NetworkPolicy, Object, Pod};

use crate::matching::policy_selects;

/// What an update changed, so callers (the agent) can skip work when nothing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Changed,
}

#[derive(Debug, Default, Clone)]
pub struct ClusterState {
    namespaces: HashMap<String, Labels>,
    /// namespace -> name -> pod: a namespace's pods without a lookup per pod.
    pods: HashMap<String, BTreeMap<String, Pod>>,
    pod_count: usize,
    policies: HashMap<Key, NetworkPolicy>,
    policies_by_namespace: HashMap<String, BTreeSet<String>>,
    /// pod -> policies of its namespace whose podSelector matches it (§1).
    selecting: HashMap<Key, BTreeSet<Key>>,
    /// policy -> pods it selects.
    selected: HashMap<Key, BTreeSet<Key>>,
    /// address -> the pod holding it. An address belongs to one pod at a time.
    ip_owner: HashMap<IpAddr, Key>,
}

impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a state from validated objects; later objects replace earlier ones.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Self {
        let mut state = Self::new();
        for object in objects {
            state.apply(object.clone());
        }
        state
    }

    pub fn apply(&mut self, object: Object) -> Change {
        match object {
            Object::Namespace(ns) => self.upsert_namespace(ns),
            Object::Pod(pod) => self.upsert_pod(pod),
            Object::NetworkPolicy(p) => self.upsert_policy(p),
        }
    }

    // ---- namespaces ----

    pub fn upsert_namespace(&mut self, ns: Namespace) -> Change {
        if self.namespaces.get(&ns.name) == Some(&ns.labels) {
            return Change::Unchanged;
        }
        self.namespaces.insert(ns.name, ns.labels);
        Change::Changed
    }

    pub fn delete_namespace(&mut self, name: &str) -> Change {
        match self.namespaces.remove(name) {
            Some(_) => Change::Changed,
            None => Change::Unchanged,
        }
    }

    /// A namespace's labels; one never declared still carries its implicit name label (§7).
    pub fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(labels) => Cow::Borrowed(labels),
            None => Cow::Owned(Namespace::new(name, Labels::new()).labels),
        }
    }

    /// Namespaces known from Namespace objects (not merely referenced), sorted.
    pub fn declared_namespaces(&self) -> impl Iterator<Item = &str> + '_ {
        let names: BTreeSet<&str> = self.namespaces.keys().map(String::as_str).collect();
        names.into_iter()
    }

    /// Every namespace that is declared or holds a pod or policy, sorted.
    pub fn namespace_names(&self) -> BTreeSet<&str> {
        self.namespaces
            .keys()
            .chain(self.pods.keys())
            .chain(self.policies_by_namespace.keys())
            .map(String::as_str)
            .collect()
    }

    // ---- pods ----

    /// Adds or replaces a pod. A terminal pod (Succeeded/Failed) is removed at once (§10):
    /// its IP may be reused by a pod that must not inherit its allows.
    pub fn upsert_pod(&mut self, pod: Pod) -> Change {
        if pod.phase.is_terminal() {
            return self.delete_pod(&pod.key);
        }
        if self.pod(&pod.key) == Some(&pod) {
            return Change::Unchanged;
        }
        let key = pod.key.clone();
        self.unindex_pod(&key);
        // §10: an address now held by this pod was released by its previous holder (a pod
        // whose delete has not arrived yet); that pod must not keep matching it.
        // hostNetwork pods own no address: they all carry their node's (§11).
        for ip in pod.ips.iter().filter(|_| !pod.host_network) {
            if let Some(previous) = self.ip_owner.insert(*ip, key.clone())
                && previous != key
                && let Some(stale) = self
                    .pods
                    .get_mut(&previous.namespace)
                    .and_then(|m| m.get_mut(&previous.name))
            {
                stale.ips.retain(|a| a != ip);
            }
        }
        let mut selecting = BTreeSet::new();
        for name in self
            .policies_by_namespace
            .get(&key.namespace)
            .into_iter()
            .flatten()
        {
            let policy_key = Key::new(&key.namespace, name);
            if policy_selects(&self.policies[&policy_key], &pod) {
                self.selected
                    .entry(policy_key.clone())
                    .or_default()
                    .insert(key.clone());
                selecting.insert(policy_key);
            }
        }
        self.selecting.insert(key.clone(), selecting);
        self.pods
            .entry(key.namespace)
            .or_default()
            .insert(key.name, pod);
        self.pod_count += 1;
        Change::Changed
    }

    pub fn delete_pod(&mut self, key: &Key) -> Change {
        if self.unindex_pod(key) {
            Change::Changed
        } else {
            Change::Unchanged
        }
    }

    fn unindex_pod(&mut self, key: &Key) -> bool {
        let Some(namespace) = self.pods.get_mut(&key.namespace) else {
            return false;
        };
        let Some(pod) = namespace.remove(&key.name) else {
            return false;
        };
        if namespace.is_empty() {
            self.pods.remove(&key.namespace);
        }
        self.pod_count -= 1;
        for ip in &pod.ips {
            if self.ip_owner.get(ip) == Some(key) {
                self.ip_owner.remove(ip);
            }
        }
        for policy in self.selecting.remove(key).unwrap_or_default() {
            if let Some(pods) = self.selected.get_mut(&policy) {
                pods.remove(key);
            }
        }
        true
    }

    pub fn pod(&self, key: &Key) -> Option<&Pod> {
        self.pods.get(&key.namespace).and_then(|m| m.get(&key.name))
    }

    /// Pods sorted by key.
    pub fn pods(&self) -> Vec<&Pod> {
        let mut pods: Vec<&Pod> = self.pods_unordered().collect();
        pods.sort_by(|a, b| a.key.cmp(&b.key));
        pods
    }

    /// The pod holding an address, if any.
    pub fn ip_owner(&self, ip: &IpAddr) -> Option<&Key> {
        self.ip_owner.get(ip)
    }

    /// Pods in no particular order (cheaper than [`Self::pods`] when order is irrelevant).
    pub fn pods_unordered(&self) -> impl Iterator<Item = &Pod> + '_ {
        self.pods.values().flat_map(BTreeMap::values)
    }

    pub fn pod_count(&self) -> usize {
        self.pod_count
    }

    pub fn pods_in_namespace(&self, namespace: &str) -> impl Iterator<Item = &Pod> + '_ {
        self.pods
            .get(namespace)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    // ---- policies ----

    pub fn upsert_policy(&mut self, policy: NetworkPolicy) -> Change {
        if self.policies.get(&policy.key) == Some(&policy) {
            return Change::Unchanged;
        }
        let key = policy.key.clone();
        self.unindex_policy(&key);
        let mut selected = BTreeSet::new();
        for pod in self.pods_in_namespace(&key.namespace) {
            if policy_selects(&policy, pod) {
                selected.insert(pod.key.clone());
            }
        }
        for pod in &selected {
            self.selecting
                .entry(pod.clone())
                .or_default()
                .insert(key.clone());
        }
        self.selected.insert(key.clone(), selected);
        self.policies_by_namespace
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.name.clone());
        self.policies.insert(key, policy);
        Change::Changed
    }

    pub fn delete_policy(&mut self, key: &Key) -> Change {
        if self.unindex_policy(key) {
            Change::Changed
        } else {
            Change::Unchanged
        }
    }

    fn unindex_policy(&mut self, key: &Key) -> bool {
        if self.policies.remove(key).is_none() {
            return false;
        }
        for pod in self.selected.remove(key).unwrap_or_default() {
            if let Some(policies) = self.selecting.get_mut(&pod) {
                policies.remove(key);
            }
        }
        remove_from_group(&mut self.policies_by_namespace, &key.namespace, &key.name);
        true
    }

    pub fn policy(&self, key: &Key) -> Option<&NetworkPolicy> {
        self.policies.get(key)
    }

    /// Policies sorted by key.
    pub fn policies(&self) -> Vec<&NetworkPolicy> {
        let mut policies: Vec<&NetworkPolicy> = self.policies.values().collect();
        policies.sort_by(|a, b| a.key.cmp(&b.key));
        policies
    }

    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Policies selecting a pod, sorted by key (§1, §3).
    pub fn policies_selecting(&self, pod: &Key) -> impl Iterator<Item = &NetworkPolicy> + '_ {
        self.selecting
            .get(pod)
            .into_iter()
            .flatten()
            .map(|k| &self.policies[k])
    }

    /// Pods a policy selects, sorted by key.
    pub fn pods_selected_by(&self, policy: &Key) -> impl Iterator<Item = &Pod> + '_ {
        self.selected
            .get(policy)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pod(k))
    }
}

fn remove_from_group(groups: &mut HashMap<String, BTreeSet<String>>, group: &str, item: &str) {
    if let Some(items) = groups.get_mut(group) {
        items.remove(item);
        if items.is_empty() {
            groups.remove(group);
        }
    }
}
