//! Prometheus metrics of the agent.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type KindLabel = Vec<(String, String)>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Time from an event's arrival (watch or folder) to its rules being in the kernel.
    pub event_to_applied: Histogram,
    /// Compile + apply time of one batch.
    pub sync_duration: Histogram,
    pub rules: Gauge,
    pub sets: Gauge,
    pub set_elements: Gauge,
    pub endpoints: Gauge,
    pub watch_restarts: Family<KindLabel, Counter>,
    pub apply_errors: Counter,
    pub invalid_objects: Counter,
    pub applies: Counter,
    pub uninterpretable_objects: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade");
        let event_to_applied = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let sync_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let m = Metrics {
            event_to_applied,
            sync_duration,
            rules: Gauge::default(),
            sets: Gauge::default(),
            set_elements: Gauge::default(),
            endpoints: Gauge::default(),
            watch_restarts: Family::default(),
            apply_errors: Counter::default(),
            invalid_objects: Counter::default(),
            applies: Counter::default(),
            uninterpretable_objects: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "event_to_applied_seconds",
            "Time from an API event to its rules being applied",
            m.event_to_applied.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Compile and apply time of one batch",
            m.sync_duration.clone(),
        );
        registry.register(
            "ruleset_rules",
            "Allow rules in the applied ruleset",
            m.rules.clone(),
        );
        registry.register(
            "ruleset_sets",
            "Peer and port sets in the applied ruleset",
            m.sets.clone(),
        );
        registry.register(
            "ruleset_set_elements",
            "Elements of the sets in the applied ruleset",
            m.set_elements.clone(),
        );
        registry.register("endpoints", "Local endpoints enforced", m.endpoints.clone());
        registry.register(
            "watch_restarts",
            "Watch errors followed by a retry (re-list), by kind",
            m.watch_restarts.clone(),
        );
        registry.register(
            "apply_errors",
            "Failed dataplane applies",
            m.apply_errors.clone(),
        );
        registry.register(
            "invalid_objects",
            "Objects rejected by validation (the last valid version is kept)",
            m.invalid_objects.clone(),
        );
        registry.register("applies", "Successful dataplane applies", m.applies.clone());
        registry.register(
            "uninterpretable_objects",
            "Stored objects that cannot be fully interpreted, enforced fail-closed",
            m.uninterpretable_objects.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn watch_restart(&self, kind: &str) {
        self.watch_restarts
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
