//! The controller: applies source events to the engine state, batches them, compiles the
//! node's IR and moves the dataplane to it. Runs on its own thread: the dataplane's
//! applies are blocking, and one consumer keeps the order of events. The dataplane's
//! counters are read on a thread of their own when the backend has a
//! [`palisade_ir::CounterReader`] (a read can take a second at 10,000 policies, and an
//! event must not wait for it); otherwise between applies.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use palisade_engine::Kind;
use palisade_engine::{ClusterState, LiveState};
use palisade_ir::{
    CounterReader, Dataplane, DataplaneError, Reconciled, Reconciler, ReconcilerConfig,
};
use palisade_model::{Key, Object};

use crate::metrics::Metrics;

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
        BatchConfig {
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        }
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
        self.failing_sources
            .lock()
            .expect("health lock")
            .remove(source);
    }

    pub fn source_failing(&self, source: &str) {
        self.failing_sources
            .lock()
            .expect("health lock")
            .insert(source.to_string());
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
    live: LiveState,
    reconciler: Reconciler,
    synced_kinds: BTreeSet<Kind>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    counters_read: Option<Instant>,
    counters_every: Duration,
    /// True while a [`CounterReader`] thread reads the counters (housekeeping does not).
    counters_on_thread: bool,
    events: Option<Arc<crate::events::EventHub>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// The longest the loop waits for an event before it looks for a stop request again.
const STOP_POLL: Duration = Duration::from_millis(200);
/// How often the dataplane's per-rule counters are read into /metrics, by default.
const COUNTERS_INTERVAL: Duration = Duration::from_secs(10);

impl Controller {
    pub fn new(
        node: String,
        dataplane: Box<dyn Dataplane>,
        reconciler: ReconcilerConfig,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Controller {
            node,
            live: LiveState::new(),
            reconciler: Reconciler::new(dataplane, reconciler),
            synced_kinds: BTreeSet::new(),
            metrics,
            health,
            counters_read: None,
            counters_every: COUNTERS_INTERVAL,
            counters_on_thread: false,
            events: None,
        }
    }

    /// How often the dataplane's counters are read into /metrics (default 10 s).
    pub fn with_counters_every(mut self, every: Duration) -> Self {
        self.counters_every = every;
        self
    }

    /// Tells `hub` of every ruleset before it is applied, so the events its rules report
    /// resolve to reasons.
    pub fn with_event_hub(mut self, hub: Arc<crate::events::EventHub>) -> Self {
        self.events = Some(hub);
        self
    }

    pub fn state(&self) -> &ClusterState {
        self.live.state()
    }

    fn synced(&self) -> bool {
        self.synced_kinds.len() == Kind::ALL.len()
    }

    /// Work due without an event: a retry after a failed apply, the periodic resync, a
    /// counter read. Returns how long the loop may wait for the next event.
    fn housekeeping(&mut self) -> Duration {
        if !self.synced() {
            return STOP_POLL;
        }
        let now = Instant::now();
        if self.reconciler.failing() || self.reconciler.resync_due_at().is_some_and(|at| now >= at)
        {
            self.sync(&[]);
        }
        if !self.counters_on_thread
            && self
                .counters_read
                .is_none_or(|at| now >= at + self.counters_every)
        {
            self.counters_read = Some(now);
            let read = self.reconciler.counters();
            publish_counters(&self.metrics, read, now);
        }
        if self.reconciler.failing() {
            return RETRY_INTERVAL;
        }
        let until_resync = self.reconciler.resync_due_at().map_or(Duration::MAX, |at| {
            at.saturating_duration_since(Instant::now())
        });
        // Never longer than STOP_POLL: the loop checks for a stop request between waits.
        until_resync
            .min(self.counters_every)
            .clamp(Duration::from_millis(10), STOP_POLL)
    }

    /// Consumes events until `stop` fires (or every source is gone and `stop` fires).
    pub fn run(
        mut self,
        events: Receiver<SourceEvent>,
        stop: Receiver<()>,
        batch: BatchConfig,
        cleanup_on_exit: bool,
    ) -> Result<(), DataplaneError> {
        let counter_thread = self.start_counter_reader();
        let mut sources_gone = false;
        loop {
            if stop.try_recv().is_ok() {
                break;
            }
            let wait = self.housekeeping();
            if sources_gone {
                // Keep the rules in place (retrying and resyncing); wait to be told to stop.
                if stop.recv_timeout(wait.min(RETRY_INTERVAL)).is_ok() {
                    break;
                }
                continue;
            }
            let first = match events.recv_timeout(wait) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => continue,
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
            if self.synced() {
                self.sync(&arrived);
            }
        }
        if let Some((stop, thread)) = counter_thread {
            // Stops after the read in progress, if any (bounded: a read ends).
            drop(stop);
            if thread.join().is_err() {
                tracing::error!("the counter reader thread panicked");
            }
        }
        if cleanup_on_exit {
            tracing::info!("removing rules (--cleanup-on-exit)");
            self.reconciler.remove()?;
        } else {
            tracing::info!("leaving rules in place");
        }
        Ok(())
    }

    /// Starts reading the counters every `counters_every` on a thread of its own, if the
    /// backend has a reader; returns what stops it (drop the sender) and its handle.
    fn start_counter_reader(&mut self) -> Option<(Sender<()>, std::thread::JoinHandle<()>)> {
        let reader = match self.reconciler.counter_reader() {
            Ok(reader) => reader,
            Err(e) => {
                tracing::debug!(error = %e, "counters are read between applies");
                return None;
            }
        };
        let (stop_tx, stop_rx) = channel();
        let (metrics, every) = (self.metrics.clone(), self.counters_every);
        match std::thread::Builder::new()
            .name("palisade-counters".into())
            .spawn(move || read_counters_until_stopped(reader, &metrics, every, &stop_rx))
        {
            Ok(handle) => {
                self.counters_on_thread = true;
                Some((stop_tx, handle))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no counter thread; counters are read between applies");
                None
            }
        }
    }

    /// Feeds one change into the engine state.
    pub fn apply_change(&mut self, change: Change) {
        match change {
            Change::Apply(object) => self.live.apply(object),
            Change::Delete(kind, key) => self.live.delete(kind, &key),
            Change::Replace(kind, objects) => {
                self.live.reset_kind(kind, objects);
                if self.synced_kinds.insert(kind) {
                    tracing::info!(kind = kind.as_str(), "initial list received");
                }
            }
        }
    }

    /// Compiles the node and has the reconciler move the dataplane there.
    fn sync(&mut self, arrived: &[Instant]) {
        let started = Instant::now();
        let desired = self.live.compile_node(&self.node);
        let stats = desired.stats();
        if let Some(hub) = &self.events {
            hub.applied(&desired);
        }
        match self.reconciler.reconcile(desired) {
            Ok(outcome) => {
                let done = Instant::now();
                self.metrics
                    .sync_duration
                    .observe((done - started).as_secs_f64());
                for at in arrived {
                    self.metrics
                        .event_to_applied
                        .observe((done - *at).as_secs_f64());
                }
                if let Reconciled::Applied {
                    report,
                    element_changes,
                } = outcome
                {
                    // An apply that sent nothing to the kernel is not counted.
                    if report.full || report.operations > 0 {
                        self.metrics.applies.inc();
                    }
                    self.metrics.rules.set(stats.rules as i64);
                    self.metrics
                        .sets
                        .set((stats.peer_sets + stats.port_sets) as i64);
                    self.metrics.set_elements.set(stats.set_elements as i64);
                    self.metrics.endpoints.set(stats.endpoints as i64);
                    tracing::info!(
                        full = report.full,
                        operations = report.operations,
                        element_changes,
                        generation = self.reconciler.generation(),
                        endpoints = stats.endpoints,
                        rules = stats.rules,
                        elapsed_ms = (done - started).as_secs_f64() * 1000.0,
                        "applied"
                    );
                }
                self.health.set_synced();
            }
            Err(e) => {
                self.metrics.apply_errors.inc();
                tracing::error!(error = %e, "apply failed; the previous rules stay in place, retrying in full");
            }
        }
    }
}

/// The counter thread's loop: a read every `every` (start to start), but never more than
/// half the time reading (a listing slower than the interval is not run back to back),
/// until `stop` fires or its sender is dropped.
fn read_counters_until_stopped(
    mut reader: Box<dyn CounterReader>,
    metrics: &Metrics,
    every: Duration,
    stop: &Receiver<()>,
) {
    loop {
        let started = Instant::now();
        let read = reader.counters();
        publish_counters(metrics, read, started);
        let took = started.elapsed();
        match stop.recv_timeout(every.saturating_sub(took).max(took)) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn publish_counters(
    metrics: &Metrics,
    read: Result<palisade_ir::Counters, DataplaneError>,
    started: Instant,
) {
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match read {
        Ok(c) => {
            metrics.set_counters(&c);
            tracing::debug!(elapsed_ms, "counters read");
        }
        Err(e) => tracing::debug!(error = %e, elapsed_ms, "counters not read"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Sender, channel};

    use palisade_model::{Labels, Namespace, NetworkPolicy, Pod};

    use super::*;

    /// Records what the controller asked of the dataplane; can be told to fail.
    type Recorder = palisade_ir::RecordingDataplane;

    fn pod(name: &str, ip: &str, node: &str) -> Object {
        let mut p = Pod::new(
            "ns",
            name,
            Labels::from([("app".to_string(), name.to_string())]),
        );
        p.ips = vec![ip.parse().unwrap()];
        p.node = Some(node.into());
        Object::Pod(p)
    }

    fn deny_all() -> Object {
        Object::NetworkPolicy(NetworkPolicy {
            key: Key::new("ns", "deny"),
            pod_selector: Default::default(),
            isolates_ingress: true,
            isolates_egress: false,
            ingress: vec![],
            egress: vec![],
            audit: false,
        })
    }

    fn send(tx: &Sender<SourceEvent>, change: Change) {
        tx.send(SourceEvent {
            at: Instant::now(),
            change,
        })
        .unwrap();
    }

    fn initial_lists(tx: &Sender<SourceEvent>) {
        send(
            tx,
            Change::Replace(
                Kind::Namespace,
                vec![Object::Namespace(Namespace::new("ns", Labels::new()))],
            ),
        );
        send(
            tx,
            Change::Replace(
                Kind::Pod,
                vec![pod("a", "10.0.0.1", "n1"), pod("b", "10.0.0.2", "n2")],
            ),
        );
        send(tx, Change::Replace(Kind::NetworkPolicy, vec![]));
    }

    /// What [`start`] returns.
    type Running = (
        Sender<SourceEvent>,
        Sender<()>,
        std::thread::JoinHandle<Result<(), DataplaneError>>,
        Arc<Health>,
    );

    /// Runs a controller on a thread; returns the event sender, the stop sender, the
    /// thread handle and the controller's health.
    fn start(rec: &Recorder, batch: BatchConfig, cleanup: bool) -> Running {
        let health = Arc::new(Health::default());
        let c = Controller::new(
            "n1".into(),
            Box::new(rec.clone()),
            ReconcilerConfig::default(),
            Arc::new(Metrics::new()),
            health.clone(),
        );
        let (tx, rx) = channel();
        let (stop_tx, stop_rx) = channel();
        let handle = std::thread::spawn(move || c.run(rx, stop_rx, batch, cleanup));
        (tx, stop_tx, handle, health)
    }

    /// Waits (bounded) until the recorder saw `n` calls.
    fn wait_calls(rec: &Recorder, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while rec.calls().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        rec.calls()
    }

    #[test]
    fn nothing_is_applied_before_every_kind_is_listed_then_full_then_updates() {
        let rec = Recorder::default();
        let (tx, stop, handle, health) = start(&rec, BatchConfig::default(), false);
        send(
            &tx,
            Change::Replace(Kind::Pod, vec![pod("a", "10.0.0.1", "n1")]),
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(rec.calls().is_empty(), "applied before the initial lists");
        assert!(health.not_ready_reason().is_some());
        send(&tx, Change::Replace(Kind::Namespace, vec![]));
        send(&tx, Change::Replace(Kind::NetworkPolicy, vec![]));
        assert_eq!(wait_calls(&rec, 1), ["full 1"]);
        assert_eq!(health.not_ready_reason(), None);
        send(&tx, Change::Apply(deny_all()));
        assert_eq!(wait_calls(&rec, 2), ["full 1", "update 1"]);
        stop.send(()).unwrap();
        handle.join().unwrap().unwrap();
        assert_eq!(
            rec.calls(),
            ["full 1", "update 1"],
            "rules stay in place on stop"
        );
    }

    #[test]
    fn events_arriving_together_are_applied_together() {
        let rec = Recorder::default();
        let batch = BatchConfig {
            quiet: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
        };
        let (tx, stop, handle, _) = start(&rec, batch, false);
        initial_lists(&tx);
        for i in 0..20 {
            send(
                &tx,
                Change::Apply(pod(&format!("p{i}"), &format!("10.0.1.{i}"), "n1")),
            );
        }
        assert_eq!(wait_calls(&rec, 1), ["full 21"]);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            rec.calls(),
            ["full 21"],
            "one transaction for the whole burst"
        );
        stop.send(()).unwrap();
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn a_failed_apply_is_retried_in_full_and_cleanup_on_exit_removes() {
        let rec = Recorder::default();
        rec.fail_next(1);
        let (tx, stop, handle, health) = start(&rec, BatchConfig::default(), true);
        initial_lists(&tx);
        let calls = wait_calls(&rec, 2);
        assert_eq!(calls, ["full 1 FAILED", "full 1"]);
        assert_eq!(health.not_ready_reason(), None);
        stop.send(()).unwrap();
        handle.join().unwrap().unwrap();
        assert_eq!(rec.calls().last().unwrap(), "remove");
    }

    #[test]
    fn a_slow_counter_read_does_not_delay_an_apply() {
        let rec = Recorder::default();
        let release = rec.block_counter_reads();
        let metrics = Arc::new(Metrics::new());
        let c = Controller::new(
            "n1".into(),
            Box::new(rec.clone()),
            ReconcilerConfig::default(),
            metrics.clone(),
            Arc::new(Health::default()),
        )
        .with_counters_every(Duration::from_millis(10));
        let (tx, rx) = channel();
        let (stop_tx, stop_rx) = channel();
        let handle = std::thread::spawn(move || c.run(rx, stop_rx, BatchConfig::default(), false));
        initial_lists(&tx);
        assert_eq!(wait_calls(&rec, 1), ["full 1"]);
        // A read is under way, and stays so until the test answers it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while rec.counter_reads().0 == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(rec.counter_reads(), (1, 0), "one read started, none done");
        send(&tx, Change::Apply(deny_all()));
        assert_eq!(
            wait_calls(&rec, 2),
            ["full 1", "update 1"],
            "the event was applied while the counter read was blocked"
        );
        assert_eq!(rec.counter_reads(), (1, 0), "the read was still blocked");
        // The read's result reaches /metrics once it returns.
        let origin = palisade_ir::RuleOrigin {
            policy_namespace: "ns".into(),
            policy_name: "p".into(),
            direction: palisade_ir::Direction::Ingress,
            rule_index: 0,
        };
        let mut counters = palisade_ir::Counters::default();
        counters.allowed.insert(
            origin,
            palisade_ir::Count {
                packets: 7,
                bytes: 420,
            },
        );
        release.send(counters).unwrap();
        // The next read starts after the first one's result is published.
        let deadline = Instant::now() + Duration::from_secs(10);
        while rec.counter_reads().0 < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let line = metrics
            .render()
            .lines()
            .find(|l| l.starts_with("palisade_rule_allowed_packets{"))
            .map(str::to_string);
        let line = line.expect("the rule's counter in /metrics");
        assert!(
            line.contains("policy=\"p\"") && line.ends_with(" 7"),
            "{line}"
        );
        // Stopping waits for the read in progress only; dropping the sender fails it.
        drop(release);
        stop_tx.send(()).unwrap();
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn a_relist_removes_what_disappeared() {
        let health = Arc::new(Health::default());
        let mut c = Controller::new(
            "n1".into(),
            Box::new(Recorder::default()),
            ReconcilerConfig::default(),
            Arc::new(Metrics::new()),
            health,
        );
        c.apply_change(Change::Replace(
            Kind::Pod,
            vec![pod("a", "10.0.0.1", "n1"), pod("b", "10.0.0.2", "n1")],
        ));
        c.apply_change(Change::Replace(Kind::NetworkPolicy, vec![deny_all()]));
        c.apply_change(Change::Replace(
            Kind::Namespace,
            vec![Object::Namespace(Namespace::new("ns", Labels::new()))],
        ));
        // After a 410 Gone the watcher re-lists: b and the policy are gone, c is new.
        c.apply_change(Change::Replace(
            Kind::Pod,
            vec![pod("a", "10.0.0.1", "n1"), pod("c", "10.0.0.3", "n1")],
        ));
        c.apply_change(Change::Replace(Kind::NetworkPolicy, vec![]));
        c.apply_change(Change::Replace(Kind::Namespace, vec![]));
        let pods: Vec<String> = c.state().pods().iter().map(|p| p.key.to_string()).collect();
        assert_eq!(pods, ["ns/a", "ns/c"]);
        assert_eq!(c.state().policy_count(), 0);
        assert_eq!(c.state().declared_namespaces().count(), 0);
    }
}
