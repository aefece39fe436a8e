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
    /// New connections allowed per policy rule, as the dataplane counts them.
    pub rule_packets: Family<RuleLabels, Gauge>,
    /// New connections dropped by default deny, per local endpoint and direction.
    pub default_deny_packets: Family<EndpointLabels, Gauge>,
    pub uninterpretable_objects: Gauge,
    /// New connections that audited policies would deny, per local endpoint and direction.
    pub audit_denied_packets: Family<EndpointLabels, Gauge>,
    /// Verdict events reported, by verdict and direction.
    pub verdict_events: Family<KindLabel, Counter>,
    /// Kernel reports folded into an earlier event of the same connection attempt.
    pub verdict_retransmissions: Counter,
    /// Reports lost between the kernel and the agent (see `EventSource::lost`).
    pub verdict_events_lost: Counter,
    /// From the agent reading a kernel report to its event being written and sent.
    pub verdict_event_delay: Histogram,
}

/// One policy rule: bounded by the rules of the policies selecting local pods.
type RuleLabels = Vec<(String, String)>;
/// One local endpoint and direction: bounded by the node's pods.
type EndpointLabels = Vec<(String, String)>;

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
            rule_packets: Family::default(),
            default_deny_packets: Family::default(),
            uninterpretable_objects: Gauge::default(),
            audit_denied_packets: Family::default(),
            verdict_events: Family::default(),
            verdict_retransmissions: Counter::default(),
            verdict_events_lost: Counter::default(),
            verdict_event_delay: Histogram::new(exponential_buckets(0.00001, 2.0, 16)),
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
        registry.register(
            "applies",
            "Successful dataplane applies that changed the kernel",
            m.applies.clone(),
        );
        registry.register(
            "rule_allowed_packets",
            "New connections allowed, per policy rule (read from the dataplane's counters)",
            m.rule_packets.clone(),
        );
        registry.register(
            "default_deny_dropped_packets",
            "New connections dropped by default deny, per local endpoint and direction",
            m.default_deny_packets.clone(),
        );
        registry.register(
            "uninterpretable_objects",
            "Stored objects that cannot be fully interpreted, enforced fail-closed",
            m.uninterpretable_objects.clone(),
        );
        registry.register(
            "audit_denied_packets",
            "New connections that policies in audit mode would deny (they passed), per local endpoint and direction",
            m.audit_denied_packets.clone(),
        );
        registry.register(
            "verdict_events",
            "Verdict events reported, by verdict and direction",
            m.verdict_events.clone(),
        );
        registry.register(
            "verdict_event_retransmissions",
            "Kernel reports folded into an earlier event of the same connection attempt",
            m.verdict_retransmissions.clone(),
        );
        registry.register(
            "verdict_events_lost",
            "Kernel reports lost before the agent read them (NFLOG buffer overflows, a full BPF ring buffer)",
            m.verdict_events_lost.clone(),
        );
        registry.register(
            "verdict_event_delay_seconds",
            "From reading a kernel report to its event being written",
            m.verdict_event_delay.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn verdict_event(
        &self,
        verdict: palisade_ir::events::Verdict,
        direction: palisade_ir::Direction,
    ) {
        self.verdict_events
            .get_or_create(&vec![
                ("verdict".to_string(), verdict.as_str().to_string()),
                ("direction".to_string(), direction.as_str().to_string()),
            ])
            .inc();
    }

    pub fn watch_restart(&self, kind: &str) {
        self.watch_restarts
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }

    /// Replaces the per-rule and per-endpoint counter series with what the dataplane
    /// reports now (series of rules and endpoints that are gone disappear).
    pub fn set_counters(&self, counters: &palisade_ir::Counters) {
        self.rule_packets.clear();
        for (origin, count) in &counters.allowed {
            let labels = vec![
                ("namespace".to_string(), origin.policy_namespace.clone()),
                ("policy".to_string(), origin.policy_name.clone()),
                (
                    "direction".to_string(),
                    origin.direction.as_str().to_string(),
                ),
                ("rule".to_string(), origin.rule_index.to_string()),
            ];
            self.rule_packets
                .get_or_create(&labels)
                .set(count.packets as i64);
        }
        for (family, counts) in [
            (&self.default_deny_packets, &counters.default_deny),
            (&self.audit_denied_packets, &counters.audit_denied),
        ] {
            family.clear();
            for ((endpoint, direction), count) in counts {
                let labels = vec![
                    ("endpoint".to_string(), endpoint.clone()),
                    ("direction".to_string(), direction.as_str().to_string()),
                ];
                family.get_or_create(&labels).set(count.packets as i64);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
