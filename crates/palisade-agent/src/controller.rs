//! The controller: applies source events to the engine state, batches them, compiles the
//! node's IR and moves the dataplane to it. Runs on its own thread: the dataplane's
//! applies are blocking, and one consumer keeps the order of events.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_engine::ClusterState;
use palisade_ir::{Dataplane, DataplaneError, NodeRuleset};
use palisade_model::{Key, Object};

use crate::metrics::Metrics;

/// The kinds the agent watches.
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
}

/// What a source saw.
#[derive(Debug, Clone)]
pub enum Change {
    Apply(Object),
    /// A namespace is `Key { namespace: "", name }`.
    Delete(Kind, Key),
    /// The complete current set of a kind (initial list, re-list after an error, or a new
    /// snapshot of the manifests folder): objects not in it are gone.
    Replace(Kind, Vec<Object>),
}

#[derive(Debug, Clone)]
pub struct SourceEvent {
    /// When the source received it: the start of the event-to-enforced latency.
    pub at: Instant,
    pub change: Change,
}

/// Batching: after the first event, wait until `quiet` passes without a new one, but never
/// longer than `max_delay` in all, so a steady stream of events cannot starve the apply.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub quiet: Duration,
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { quiet: Duration::from_millis(5), max_delay: Duration::from_millis(50) }
    }
}

/// Readiness, shared with the HTTP server and the sources.
#[derive(Debug, Default)]
pub struct Health {
    synced: AtomicBool,
    failing_sources: Mutex<BTreeSet<String>>,
}

impl Health {
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    pub fn source_ok(&self, source: &str) {
        self.failing_sources.lock().expect("health lock").remove(source);
    }

    pub fn source_failing(&self, source: &str) {
        self.failing_sources.lock().expect("health lock").insert(source.to_string());
    }

    /// None when ready.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.synced.load(Ordering::SeqCst) {
            return Some("first full sync not applied yet".into());
        }
        let failing = self.failing_sources.lock().expect("health lock");
        if !failing.is_empty() {
            let names: Vec<&str> = failing.iter().map(String::as_str).collect();
            return Some(format!("source failing: {}", names.join(", ")));
        }
        None
    }
}

pub struct Controller {
    node: String,
    state: ClusterState,
    dataplane: Box<dyn Dataplane>,
    applied: Option<NodeRuleset>,
    /// The last apply failed: the next one replaces everything.
    retry: bool,
    synced_kinds: BTreeSet<Kind>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("node", &self.node).finish_non_exhaustive()
    }
}

const RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl Controller {
    pub fn new(
        node: String,
        dataplane: Box<dyn Dataplane>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Controller {
            node,
            state: ClusterState::new(),
            dataplane,
            applied: None,
            retry: false,
            synced_kinds: BTreeSet::new(),
            metrics,
            health,
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Consumes events until `stop` fires (or every source is gone and `stop` fires).
    pub fn run(
        mut self,
        events: Receiver<SourceEvent>,
        stop: Receiver<()>,
        batch: BatchConfig,
        cleanup_on_exit: bool,
    ) -> Result<(), DataplaneError> {
        let mut sources_gone = false;
        loop {
            if stop.try_recv().is_ok() {
                break;
            }
            if sources_gone {
                // Keep the rules in place; just wait to be told to stop.
                if stop.recv_timeout(RETRY_INTERVAL).is_ok() {
                    break;
                }
                if self.retry {
                    self.sync(&[]);
                }
                continue;
            }
            let wait = if self.retry { RETRY_INTERVAL } else { Duration::from_millis(200) };
            let first = match events.recv_timeout(wait) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => {
                    if self.retry {
                        self.sync(&[]);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    sources_gone = true;
                    continue;
                }
            };
            let batch_start = Instant::now();
            let mut arrived = vec![first.at];
            self.apply_change(first.change);
            loop {
                let left = batch.max_delay.saturating_sub(batch_start.elapsed());
                if left.is_zero() {
                    break;
                }
                match events.recv_timeout(batch.quiet.min(left)) {
                    Ok(e) => {
                        arrived.push(e.at);
                        self.apply_change(e.change);
                    }
                    Err(_) => break,
                }
            }
            if self.synced_kinds.len() == Kind::ALL.len() {
                self.sync(&arrived);
            }
        }
        if cleanup_on_exit {
            tracing::info!("removing rules (--cleanup-on-exit)");
            self.dataplane.remove()?;
        } else {
            tracing::info!("leaving rules in place");
        }
        Ok(())
    }

    /// Feeds one change into the engine state.
    pub fn apply_change(&mut self, change: Change) {
        match change {
            Change::Apply(object) => {
                self.state.apply(object);
            }
            Change::Delete(Kind::Namespace, key) => {
                self.state.delete_namespace(&key.name);
            }
            Change::Delete(Kind::Pod, key) => {
                self.state.delete_pod(&key);
            }
            Change::Delete(Kind::NetworkPolicy, key) => {
                self.state.delete_policy(&key);
            }
            Change::Replace(kind, objects) => {
                self.replace(kind, objects);
                if self.synced_kinds.insert(kind) {
                    tracing::info!(kind = kind.as_str(), "initial list received");
                }
            }
        }
    }

    fn replace(&mut self, kind: Kind, objects: Vec<Object>) {
        let mut keep = BTreeSet::new();
        for o in &objects {
            keep.insert(match o {
                Object::Namespace(n) => Key::new("", &n.name),
                Object::Pod(p) => p.key.clone(),
                Object::NetworkPolicy(p) => p.key.clone(),
            });
        }
        match kind {
            Kind::Namespace => {
                let gone: Vec<String> = self
                    .state
                    .declared_namespaces()
                    .filter(|n| !keep.contains(&Key::new("", *n)))
                    .map(str::to_string)
                    .collect();
                gone.iter().for_each(|n| {
                    self.state.delete_namespace(n);
                });
            }
            Kind::Pod => {
                let gone: Vec<Key> =
                    self.state.pods().iter().map(|p| p.key.clone()).filter(|k| !keep.contains(k)).collect();
                gone.iter().for_each(|k| {
                    self.state.delete_pod(k);
                });
            }
            Kind::NetworkPolicy => {
                let gone: Vec<Key> = self
                    .state
                    .policies()
                    .iter()
                    .map(|p| p.key.clone())
                    .filter(|k| !keep.contains(k))
                    .collect();
                gone.iter().for_each(|k| {
                    self.state.delete_policy(k);
                });
            }
        }
        for o in objects {
            self.state.apply(o);
        }
    }

    /// Compiles the node and moves the dataplane there.
    fn sync(&mut self, arrived: &[Instant]) {
        let started = Instant::now();
        let desired = self.state.compile_node(&self.node);
        let result = match (&self.applied, self.retry) {
            (Some(current), false) if *current == desired => Ok(None),
            (Some(current), false) => self.dataplane.apply_update(current, &desired).map(Some),
            _ => self.dataplane.apply_full(&desired).map(Some),
        };
        match result {
            Ok(report) => {
                let done = Instant::now();
                self.metrics.sync_duration.observe((done - started).as_secs_f64());
                for at in arrived {
                    self.metrics.event_to_applied.observe((done - *at).as_secs_f64());
                }
                if let Some(report) = report {
                    let stats = desired.stats();
                    self.metrics.applies.inc();
                    self.metrics.rules.set(stats.rules as i64);
                    self.metrics.sets.set((stats.peer_sets + stats.port_sets) as i64);
                    self.metrics.set_elements.set(stats.set_elements as i64);
                    self.metrics.endpoints.set(stats.endpoints as i64);
                    tracing::info!(
                        full = report.full,
                        operations = report.operations,
                        endpoints = stats.endpoints,
                        rules = stats.rules,
                        elapsed_ms = (done - started).as_secs_f64() * 1000.0,
                        "applied"
                    );
                }
                self.applied = Some(desired);
                self.retry = false;
                self.health.set_synced();
            }
            Err(e) => {
                self.metrics.apply_errors.inc();
                self.retry = true;
                tracing::error!(error = %e, "apply failed; the previous rules stay in place, retrying");
            }
        }
    }
}
