//! Sources of cluster state: Kubernetes watches (kube-rs watcher, re-listing after errors
//! and `410 Gone`) and a manifests folder. Both send [`SourceEvent`]s of model objects.
//!
//! What the API server stored is what the agent enforces: watched objects are not put
//! through the offline validator again (the server that stored them may have had looser
//! rules, e.g. `StrictIPCIDRValidation` off) but interpreted as the API server and other
//! enforcers read them ([`convert::stored_network_policy`]: a CIDR with host bits set
//! means its network). What still cannot be interpreted fails closed (a policy keeps
//! isolating the pods it selects, with none of its allows), is logged, counted in
//! `palisade_uninterpretable_objects` and named by `/readyz`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use palisade_model::convert::Interpreted;
use palisade_model::{Key, Object, convert};
use tokio::task::JoinHandle;

use crate::AgentError;
use crate::controller::{Change, Health, Kind, SourceEvent};
use crate::metrics::Metrics;

/// What the agent reads from the API, as RBAC needs it: (apiGroup, resource, verbs).
/// deploy/01-rbac.yaml must grant exactly this (a test checks it).
pub const REQUIRED_ACCESS: [(&str, &str, &[&str]); 3] = [
    ("", "namespaces", &["list", "watch"]),
    ("", "pods", &["list", "watch"]),
    ("networking.k8s.io", "networkpolicies", &["list", "watch"]),
];

pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<Client, AgentError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| AgentError::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| AgentError::Kubeconfig(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| AgentError::Kubeconfig(e.to_string()))?,
    };
    Ok(Client::try_from(config)?)
}

/// Converting a watched object into the model, by kind.
trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: Kind;
    fn convert(&self) -> Interpreted<Object>;
    fn key(&self) -> Key;
}

fn meta_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    Key::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Watched for core::Namespace {
    const KIND: Kind = Kind::Namespace;
    fn convert(&self) -> Interpreted<Object> {
        lift(convert::stored_namespace(self), Object::Namespace)
    }
    fn key(&self) -> Key {
        Key::new("", self.metadata.name.clone().unwrap_or_default())
    }
}

impl Watched for core::Pod {
    const KIND: Kind = Kind::Pod;
    fn convert(&self) -> Interpreted<Object> {
        lift(convert::stored_pod(self), Object::Pod)
    }
    fn key(&self) -> Key {
        meta_key(&self.metadata)
    }
}

impl Watched for net::NetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicy;
    fn convert(&self) -> Interpreted<Object> {
        lift(convert::stored_network_policy(self), Object::NetworkPolicy)
    }
    fn key(&self) -> Key {
        meta_key(&self.metadata)
    }
}

fn lift<T>(i: Interpreted<T>, f: impl FnOnce(T) -> Object) -> Interpreted<Object> {
    Interpreted {
        object: f(i.object),
        problems: i.problems,
    }
}

/// The stored objects that could not be fully interpreted (and so fail closed), for
/// `/metrics` and `/readyz`.
#[derive(Debug)]
struct Uninterpretable {
    objects: Mutex<BTreeSet<(Kind, Key)>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Uninterpretable {
    fn health_name(kind: Kind, key: &Key) -> String {
        let what = if key.namespace.is_empty() {
            key.name.clone()
        } else {
            key.to_string()
        };
        format!(
            "{} {what} cannot be interpreted (enforced fail-closed)",
            kind.as_str()
        )
    }

    fn set(&self, kind: Kind, key: Key, bad: bool) {
        let mut objects = self.objects.lock().expect("uninterpretable lock");
        let name = Self::health_name(kind, &key);
        if bad {
            objects.insert((kind, key));
            self.health.source_failing(&name);
        } else if objects.remove(&(kind, key)) {
            self.health.source_ok(&name);
        }
        self.metrics
            .uninterpretable_objects
            .set(objects.len() as i64);
    }

    /// After a re-list: objects of `kind` that are no longer listed are gone.
    fn retain(&self, kind: Kind, listed: &BTreeSet<Key>) {
        let mut objects = self.objects.lock().expect("uninterpretable lock");
        let gone: Vec<(Kind, Key)> = objects
            .iter()
            .filter(|(k, key)| *k == kind && !listed.contains(key))
            .cloned()
            .collect();
        for (k, key) in gone {
            self.health.source_ok(&Self::health_name(k, &key));
            objects.remove(&(k, key));
        }
        self.metrics
            .uninterpretable_objects
            .set(objects.len() as i64);
    }
}

fn backoff(max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// One kind's source: list, then watch; after any error, wait (exponential backoff, reset
/// by a successful list) and start over with a fresh list.
///
/// Why a fresh list rather than kube-rs resuming the watch from its last resource version:
/// readiness. A resumed watch produces no event until the kind changes, so nothing could
/// tell the source is healthy again: an agent whose connection dropped for a second stayed
/// not ready for as long as nobody touched, say, a namespace. A list ends in `InitDone`,
/// which says the API is reachable and the state is whole. Lists are served from the API
/// server's watch cache, and only errors (not the server's routine watch timeouts) cause
/// one.
fn spawn_watch<K: Watched>(
    client: Client,
    tx: Sender<SourceEvent>,
    bad: Arc<Uninterpretable>,
    max_backoff: Duration,
) -> JoinHandle<()> {
    let health = bad.health.clone();
    tokio::spawn(async move {
        let api: Api<K> = Api::all(client);
        let name = format!("watch/{}", K::KIND.as_str());
        let convert = |o: &K| {
            let Interpreted { object, problems } = o.convert();
            if !problems.is_empty() {
                let fields: Vec<String> = problems.iter().map(ToString::to_string).collect();
                tracing::error!(
                    kind = K::KIND.as_str(),
                    object = %o.key(),
                    problems = %fields.join("; "),
                    "stored object cannot be fully interpreted; enforcing it fail-closed \
                     (the pods it selects stay isolated, without its allows)"
                );
            }
            bad.set(K::KIND, o.key(), !problems.is_empty());
            object
        };
        let mut delays = backoff(max_backoff);
        loop {
            let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
            let mut buffer: Vec<Object> = Vec::new();
            let mut listed: BTreeSet<Key> = BTreeSet::new();
            while let Some(item) = stream.next().await {
                let at = Instant::now();
                let change = match item {
                    Err(e) => {
                        bad.metrics.watch_restart(K::KIND.as_str());
                        health.source_failing(&name);
                        tracing::warn!(kind = K::KIND.as_str(), error = %e, "watch failed; re-listing with backoff");
                        break;
                    }
                    Ok(Event::Init) => {
                        buffer.clear();
                        listed.clear();
                        continue;
                    }
                    Ok(Event::InitApply(o)) => {
                        listed.insert(o.key());
                        buffer.push(convert(&o));
                        continue;
                    }
                    Ok(Event::InitDone) => {
                        bad.retain(K::KIND, &std::mem::take(&mut listed));
                        health.source_ok(&name);
                        delays = backoff(max_backoff);
                        Change::Replace(K::KIND, std::mem::take(&mut buffer))
                    }
                    Ok(Event::Apply(o)) => {
                        health.source_ok(&name);
                        Change::Apply(convert(&o))
                    }
                    Ok(Event::Delete(o)) => {
                        health.source_ok(&name);
                        bad.set(K::KIND, o.key(), false);
                        Change::Delete(K::KIND, o.key())
                    }
                };
                if tx.send(SourceEvent { at, change }).is_err() {
                    return; // the controller is gone
                }
            }
            // An error (or, never expected, the end of the stream): start over after a pause.
            tokio::time::sleep(delays.next().unwrap_or(max_backoff)).await;
        }
    })
}

/// One watcher per kind, all cluster-wide (peers can be anywhere).
pub fn spawn_kube_watchers(
    client: Client,
    tx: Sender<SourceEvent>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    max_backoff: Duration,
) -> Vec<JoinHandle<()>> {
    let bad = Arc::new(Uninterpretable {
        objects: Mutex::new(BTreeSet::new()),
        metrics,
        health,
    });
    vec![
        spawn_watch::<core::Namespace>(client.clone(), tx.clone(), bad.clone(), max_backoff),
        spawn_watch::<core::Pod>(client.clone(), tx.clone(), bad.clone(), max_backoff),
        spawn_watch::<net::NetworkPolicy>(client, tx, bad, max_backoff),
    ]
}

/// A fingerprint of the folder: every manifest file's path, size and modification time.
fn folder_fingerprint(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64, SystemTime)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.len(), meta.modified()?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Re-reads `dir` whenever its files change. A snapshot with any invalid object is not
/// applied at all (never a half-applied folder); the previous one stays in force.
pub fn spawn_manifests_watcher(
    dir: PathBuf,
    poll: Duration,
    tx: Sender<SourceEvent>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let name = format!("manifests/{}", dir.display());
        let mut last = None;
        loop {
            let at = Instant::now();
            match folder_fingerprint(&dir) {
                Err(e) => {
                    health.source_failing(&name);
                    tracing::error!(dir = %dir.display(), error = %e, "cannot read manifests folder");
                }
                Ok(fp) if Some(&fp) != last.as_ref() => {
                    let loaded = palisade_model::load::load_paths(&[&dir]);
                    if loaded.is_ok() {
                        health.source_ok(&name);
                        let mut by_kind = [Vec::new(), Vec::new(), Vec::new()];
                        for (_, o) in loaded.objects {
                            let i = match o {
                                Object::Namespace(_) => 0,
                                Object::Pod(_) => 1,
                                Object::NetworkPolicy(_) => 2,
                            };
                            by_kind[i].push(o);
                        }
                        for (kind, objects) in Kind::ALL.into_iter().zip(by_kind) {
                            if tx
                                .send(SourceEvent {
                                    at,
                                    change: Change::Replace(kind, objects),
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                        last = Some(fp);
                    } else {
                        metrics.invalid_objects.inc_by(loaded.errors.len() as u64);
                        health.source_failing(&name);
                        for e in &loaded.errors {
                            tracing::error!(error = %e, "manifests folder not applied");
                        }
                        last = Some(fp);
                    }
                }
                Ok(_) => {}
            }
            tokio::time::sleep(poll).await;
        }
    })
}
