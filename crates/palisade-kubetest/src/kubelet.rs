//! Writing the objects the agent watches: [`Kubelet`] for pods (what kubelet and the CNI
//! plugin would write), [`Admin`] for namespaces and NetworkPolicies (what a cluster user
//! would write). Both count, in a shared [`EventLedger`], the watch events their writes
//! cause, so a test can wait until an agent has processed exactly that many.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use palisade_lab::Lab;
use palisade_model::{Key, Labels, Protocol};
use serde_json::{Value, json};

use crate::error::{Context, Error, Result};

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// How many watch events (on namespaces, pods and NetworkPolicies, cluster-wide: what the
/// agent watches) the harness's writes have caused so far. Only writes that change an object
/// count: the API server sends no event for a no-op update.
#[derive(Debug, Clone, Default)]
pub struct EventLedger(Arc<AtomicU64>);

impl EventLedger {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::SeqCst);
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// A merge patch that makes the labels exactly `desired` (`null` removes a key).
fn label_patch(current: Option<&BTreeMap<String, String>>, desired: &Labels) -> Value {
    let mut labels = serde_json::Map::new();
    for k in current.into_iter().flat_map(|c| c.keys()) {
        labels.insert(k.clone(), Value::Null);
    }
    for (k, v) in desired {
        labels.insert(k.clone(), json!(v));
    }
    json!({"metadata": {"labels": labels}})
}

/// A container port of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

impl PodPort {
    pub fn new(name: Option<&str>, port: u16, protocol: Protocol) -> Self {
        PodPort {
            name: name.map(str::to_string),
            port,
            protocol,
        }
    }
}

/// A pod as [`Kubelet::run_pod`] creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPod {
    pub key: Key,
    pub labels: Labels,
    /// `spec.nodeName`: which agent enforces it.
    pub node: String,
    /// `status.podIPs` (the first is also `status.podIP`).
    pub ips: Vec<IpAddr>,
    pub ports: Vec<PodPort>,
}

impl RunPod {
    /// The pod `api_key` with the node and addresses of the lab pod `lab_key` (usually the
    /// same key; a different one lends the lab pod's addresses to another API pod, as when
    /// an IP is reused).
    pub fn on_lab(
        lab: &Lab,
        lab_key: &Key,
        api_key: &Key,
        labels: Labels,
        ports: Vec<PodPort>,
    ) -> Result<RunPod> {
        let node = lab
            .pod_node(lab_key)
            .ok_or_else(|| Error::other(format!("the lab has no pod {lab_key}")))?;
        Ok(RunPod {
            key: api_key.clone(),
            labels,
            node: lab.node_names()[node].clone(),
            ips: lab.pod_ips(lab_key).to_vec(),
            ports,
        })
    }
}

/// Labels from `k=v` pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Plays kubelet and CNI for the lab: pods are created already bound (`spec.nodeName`, as
/// the scheduler would leave them), then their status says `Running` with the lab's
/// addresses, written through the `pods/status` subresource as kubelet does. No container
/// runs: the lab's probe server answers on the pod's addresses instead.
#[derive(Clone)]
pub struct Kubelet {
    client: Client,
    ledger: EventLedger,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl Kubelet {
    pub fn new(client: Client, ledger: EventLedger) -> Self {
        Kubelet { client, ledger }
    }

    fn api(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Creates the pod and reports it running with its addresses (2 watch events).
    pub async fn run_pod(&self, pod: &RunPod) -> Result<()> {
        let ports: Vec<Value> = pod
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({"containerPort": p.port, "protocol": p.protocol.to_string()});
                if let Some(name) = &p.name {
                    v["name"] = json!(name);
                }
                v
            })
            .collect();
        let manifest: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.key.name, "namespace": pod.key.namespace, "labels": pod.labels},
            "spec": {
                "nodeName": pod.node,
                // Never pulled: no kubelet runs. A reserved name (.invalid) all the same.
                "containers": [{"name": "main", "image": "palisade.invalid/lab-pod:0", "ports": ports}],
            },
        }))
        .map_err(Error::other)?;
        self.api(&pod.key.namespace)
            .create(&PostParams::default(), &manifest)
            .await
            .ctx(format!("creating pod {}", pod.key))?;
        self.ledger.add(1);
        self.set_status(&pod.key, "Running", &pod.ips).await
    }

    /// Writes `status.phase` and the addresses (1 watch event).
    pub async fn set_status(&self, key: &Key, phase: &str, ips: &[IpAddr]) -> Result<()> {
        let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
        let mut status = json!({"phase": phase, "podIPs": pod_ips});
        if let Some(first) = ips.first() {
            status["podIP"] = json!(first.to_string());
        }
        self.api(&key.namespace)
            .patch_status(
                &key.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .ctx(format!("writing the status of pod {key}"))?;
        self.ledger.add(1);
        Ok(())
    }

    /// The pod's phase becomes `phase`, its addresses stay in the status (as kubelet leaves
    /// them on a pod that completed): `Succeeded` or `Failed` pods keep `podIPs`.
    pub async fn set_phase(&self, key: &Key, phase: &str) -> Result<()> {
        self.api(&key.namespace)
            .patch_status(
                &key.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": phase}})),
            )
            .await
            .ctx(format!("setting the phase of pod {key}"))?;
        self.ledger.add(1);
        Ok(())
    }

    /// Sets the pod's labels to exactly `labels`. Returns whether anything changed.
    pub async fn set_pod_labels(&self, key: &Key, labels: &Labels) -> Result<bool> {
        let api = self.api(&key.namespace);
        let current = api.get(&key.name).await.ctx(format!("reading pod {key}"))?;
        if current.metadata.labels.clone().unwrap_or_default() == *labels {
            return Ok(false);
        }
        let patch = label_patch(current.metadata.labels.as_ref(), labels);
        api.patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .ctx(format!("labelling pod {key}"))?;
        self.ledger.add(1);
        Ok(true)
    }

    /// Deletes the pod at once (grace period 0: what kubelet's final delete does once the
    /// containers are gone and the CNI released the address). Returns whether it existed.
    ///
    /// Watchers see two events: pods delete gracefully even with a grace period of 0, so the
    /// API server first writes `deletionTimestamp` (MODIFIED), then removes the pod
    /// (DELETED). The returned pod carries that timestamp when it went that way.
    pub async fn delete_pod(&self, key: &Key) -> Result<bool> {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        match self.api(&key.namespace).delete(&key.name, &params).await {
            Ok(either) => {
                let graceful = either
                    .left()
                    .is_some_and(|p| p.metadata.deletion_timestamp.is_some());
                self.ledger.add(if graceful { 2 } else { 1 });
                Ok(true)
            }
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(e).ctx(format!("deleting pod {key}")),
        }
    }

    pub async fn get_pod(&self, key: &Key) -> Result<Option<Pod>> {
        self.api(&key.namespace)
            .get_opt(&key.name)
            .await
            .ctx(format!("reading pod {key}"))
    }
}

/// Namespaces and NetworkPolicies, as a cluster user writes them.
#[derive(Clone)]
pub struct Admin {
    client: Client,
    ledger: EventLedger,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl Admin {
    pub fn new(client: Client, ledger: EventLedger) -> Self {
        Admin { client, ledger }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the namespace with `labels`, or sets its labels to them if it exists.
    pub async fn ensure_namespace(&self, name: &str, labels: &Labels) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let manifest: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels},
        }))
        .map_err(Error::other)?;
        match api.create(&PostParams::default(), &manifest).await {
            Ok(_) => {
                self.ledger.add(1);
                Ok(())
            }
            Err(e) if is_status(&e, 409) => self.set_namespace_labels(name, labels).await.map(drop),
            Err(e) => Err(e).ctx(format!("creating namespace {name}")),
        }
    }

    /// Sets the namespace's labels to `labels` (plus `kubernetes.io/metadata.name`, which the
    /// API server always keeps). Returns whether anything changed.
    pub async fn set_namespace_labels(&self, name: &str, labels: &Labels) -> Result<bool> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut desired = labels.clone();
        desired.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        let current = api
            .get(name)
            .await
            .ctx(format!("reading namespace {name}"))?;
        if current.metadata.labels.clone().unwrap_or_default() == desired {
            return Ok(false);
        }
        let patch = label_patch(current.metadata.labels.as_ref(), &desired);
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .ctx(format!("labelling namespace {name}"))?;
        self.ledger.add(1);
        Ok(true)
    }

    /// Creates the NetworkPolicy `doc`, or replaces the existing one of that name (PUT).
    /// Returns whether anything changed.
    pub async fn apply_policy(&self, doc: &Value) -> Result<bool> {
        let policy: NetworkPolicy = serde_json::from_value(doc.clone())
            .map_err(|e| Error::other(format!("policy {doc}: {e}")))?;
        let name = policy.metadata.name.clone().unwrap_or_default();
        let namespace = policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &policy).await {
            Ok(_) => {
                self.ledger.add(1);
                return Ok(true);
            }
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(e).ctx(format!("creating NetworkPolicy {namespace}/{name}")),
        }
        let current = api
            .get(&name)
            .await
            .ctx(format!("reading NetworkPolicy {namespace}/{name}"))?;
        let old_version = current.metadata.resource_version.clone();
        let mut replacement = policy;
        replacement.metadata.resource_version = old_version.clone();
        let replaced = api
            .replace(&name, &PostParams::default(), &replacement)
            .await
            .ctx(format!("replacing NetworkPolicy {namespace}/{name}"))?;
        let changed = replaced.metadata.resource_version != old_version;
        if changed {
            self.ledger.add(1);
        }
        Ok(changed)
    }

    /// Returns whether it existed.
    pub async fn delete_policy(&self, key: &Key) -> Result<bool> {
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &key.namespace);
        match api.delete(&key.name, &DeleteParams::default()).await {
            Ok(_) => {
                self.ledger.add(1);
                Ok(true)
            }
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(e).ctx(format!("deleting NetworkPolicy {key}")),
        }
    }

    /// The NetworkPolicies of `namespace`, sorted by name.
    pub async fn policies(&self, namespace: &str) -> Result<Vec<Key>> {
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), namespace);
        let list = api
            .list(&ListParams::default())
            .await
            .ctx(format!("listing NetworkPolicies in {namespace}"))?;
        let mut keys: Vec<Key> = list
            .items
            .iter()
            .map(|p| Key::new(namespace, p.metadata.name.clone().unwrap_or_default()))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Deletes every NetworkPolicy of `namespace`; returns how many.
    pub async fn delete_all_policies(&self, namespace: &str) -> Result<usize> {
        let mut n = 0;
        for key in self.policies(namespace).await? {
            n += usize::from(self.delete_policy(&key).await?);
        }
        Ok(n)
    }
}

/// `namespace -> labels` of a set of namespaces, for [`Admin::ensure_namespace`] in a loop.
pub type NamespaceLabels = BTreeMap<String, Labels>;
