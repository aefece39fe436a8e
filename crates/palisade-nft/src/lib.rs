//! # palisade-nft
//!
//! The nftables dataplane. It owns one `inet` table (default `palisade`) on the node and
//! nothing else: it translates a [`NodeRuleset`] into that table and applies it, always in
//! one `nft -f` transaction, so the kernel never holds half a ruleset.
//!
//! What it must not do: decide what a policy means, or name sets. Isolation, peers, ports
//! (named ports included), excepts, tiers, set identity and the diff come from
//! `palisade-ir`; this crate only maps them onto nft objects. It depends on `palisade-ir`
//! alone, never on the model or the engine.
//!
//! ## The table
//! - base chain `forward` (hook forward, policy accept): established/related accept, invalid
//!   drop, then the *egress* dispatch on the source address and the *ingress* dispatch on
//!   the destination address, through verdict maps `egress_v4`/`_v6` and `ingress_v4`/`_v6`
//!   (endpoint address -> `jump <direction>_<endpoint>_<hash>`).
//! - one chain per endpoint and filtered direction. Its NetworkPolicy tier is **one
//!   lookup per family**: `ip saddr . meta l4proto . th dport vmap @np_<class>_v4` (a
//!   concatenated interval map shared by every endpoint with the same rules), plus `ip
//!   saddr vmap @npany_<class>_v4` when a rule takes every port (protocols without ports,
//!   ICMP), then `counter drop` (default deny, counted per endpoint and direction).
//!   Egress chains `return` on allow so the destination's ingress check still runs.
//! - one *rule chain* per policy rule (`allow_<hash>`, comment = its [`palisade_ir::RuleOrigin`]):
//!   `counter accept` (ingress) or `counter return` (egress). Class map elements `goto`
//!   them, so every allowed new connection is counted on the rule [`palisade_ir::eval`]
//!   attributes it to (the compiler resolves overlaps: elements are disjoint).
//! - admin and baseline tiers (empty for NetworkPolicy) render as ordered rules over sets
//!   named by the IR's set ids.
//!
//! Established and related packets are accepted before any policy check: a policy change
//! judges new connections only. The node's own traffic to its pods goes through the output
//! hook, not forward, so it always passes.
//!
//! ## Where to start reading
//! `plan.rs` (IR -> kernel objects), `render.rs` (objects -> full script or update), then
//! [`NftDataplane`], which applies them through an [`NftExecutor`]: [`SystemNft`] for the
//! real kernel, [`FakeNft`] (a stateful stand-in) for tests.

mod canonical;
mod exec;
mod plan;
mod render;

use std::collections::BTreeSet;
use std::sync::Arc;

use palisade_ir::events::{EventConfig, EventSource};
use palisade_ir::{
    ApplyReport, Count, CounterReader, Counters, Dataplane, DataplaneError, NodeRuleset,
    RulesetDiff, SetId,
};

pub use canonical::canonical_listing;
pub use exec::{FakeNft, NftError, NftExecutor, SystemNft};
use plan::{CounterOwner, Plan, Planner};

/// Backend settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Name of the `inet` table this backend owns (and replaces wholesale).
    pub table: String,
    /// Verdict events through NFLOG (see [`palisade_ir::events`]); `None`: no logging.
    pub events: Option<EventConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            table: "palisade".to_string(),
            events: None,
        }
    }
}

fn plan_of(rs: &NodeRuleset, config: &Config) -> Plan {
    Planner {
        rs,
        reuse: None,
        changed_sets: &BTreeSet::new(),
        events: config.events,
    }
    .plan()
}

/// The whole table as one `nft -f` script: it creates the table if missing, deletes it and
/// re-creates it with every object, in one transaction. Deterministic.
pub fn render_full(desired: &NodeRuleset, config: &Config) -> String {
    render::full(&plan_of(desired, config), &desired.node, &config.table).text
}

/// One `nft -f` transaction that moves a table holding `current` to `desired`, touching
/// only what changed. Empty when nothing changed.
pub fn render_update(current: &NodeRuleset, desired: &NodeRuleset, config: &Config) -> String {
    render::update(
        &plan_of(current, config),
        &plan_of(desired, config),
        &config.table,
    )
    .text
}

/// Deletes the table if it exists, in one transaction that never fails on a missing table.
pub fn render_remove(config: &Config) -> String {
    let t = &config.table;
    format!("add table inet {t}\ndelete table inet {t}\n")
}

const BACKEND: &str = "nft";

/// The nftables [`Dataplane`].
///
/// It keeps the plan it last applied, so an update rebuilds only the class maps whose
/// sets changed. If nft rejects an update (the kernel no longer holds what was applied,
/// e.g. someone edited the table), it falls back to a full replace, which is always
/// correct, and reports `full: true`.
#[derive(Debug)]
pub struct NftDataplane<E: NftExecutor> {
    executor: E,
    config: Config,
    applied: Option<Arc<Plan>>,
    /// The plan the kernel holds, for [`NftCounterReader`]s on other threads: the last
    /// applied one (kept after a failed apply, which leaves the kernel as it was).
    published: palisade_ir::PublishedPlan<Plan>,
}

impl<E: NftExecutor> NftDataplane<E> {
    pub fn new(executor: E, config: Config) -> NftDataplane<E> {
        NftDataplane {
            executor,
            config,
            applied: None,
            published: Arc::default(),
        }
    }

    /// Records `plan` as applied, here and for the counter readers.
    fn set_applied(&mut self, plan: Option<Plan>) {
        let plan = plan.map(Arc::new);
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = plan.clone();
        self.applied = plan;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn executor(&self) -> &E {
        &self.executor
    }

    pub fn executor_mut(&mut self) -> &mut E {
        &mut self.executor
    }

    pub fn into_executor(self) -> E {
        self.executor
    }

    fn check(&self, rs: &NodeRuleset, action: &str) -> Result<(), DataplaneError> {
        if !plan::is_identifier(&self.config.table) {
            return Err(failed(
                action,
                format!("{:?} is not a valid nft table name", self.config.table),
            ));
        }
        rs.validate().map_err(|source| DataplaneError::Invalid {
            backend: BACKEND,
            source,
        })?;
        // The audit tier accepts what it matches (plan.rs), which would skip a baseline.
        if rs.audit_beside_baseline().is_some() {
            return Err(DataplaneError::Unsupported {
                backend: BACKEND,
                what: "an audit tier beside a baseline tier",
            });
        }
        Ok(())
    }
}

fn failed(action: &str, message: String) -> DataplaneError {
    DataplaneError::Apply {
        backend: BACKEND,
        action: action.to_string(),
        message,
    }
}

impl<E: NftExecutor + Send> Dataplane for NftDataplane<E> {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn apply_full(&mut self, desired: &NodeRuleset) -> Result<ApplyReport, DataplaneError> {
        let action = format!("full apply of table inet {}", self.config.table);
        self.check(desired, &action)?;
        let plan = plan_of(desired, &self.config);
        let script = render::full(&plan, &desired.node, &self.config.table);
        self.executor
            .run(&script.text)
            .map_err(|e| failed(&action, e.to_string()))?;
        self.set_applied(Some(plan));
        Ok(ApplyReport {
            full: true,
            operations: script.operations,
        })
    }

    fn apply_update(
        &mut self,
        current: &NodeRuleset,
        desired: &NodeRuleset,
        diff: &RulesetDiff,
    ) -> Result<ApplyReport, DataplaneError> {
        let action = format!("update of table inet {}", self.config.table);
        self.check(desired, &action)?;
        let old = self
            .applied
            .take()
            .unwrap_or_else(|| Arc::new(plan_of(current, &self.config)));
        let changed_sets: BTreeSet<SetId> = diff
            .peer_set_members
            .keys()
            .chain(diff.peer_sets_added.keys())
            .cloned()
            .collect();
        let new = Planner {
            rs: desired,
            reuse: Some(&old),
            changed_sets: &changed_sets,
            events: self.config.events,
        }
        .plan();
        let script = render::update(&old, &new, &self.config.table);
        if script.operations == 0 {
            self.set_applied(Some(new));
            return Ok(ApplyReport {
                full: false,
                operations: 0,
            });
        }
        match self.executor.run(&script.text) {
            Ok(_) => {
                self.set_applied(Some(new));
                Ok(ApplyReport {
                    full: false,
                    operations: script.operations,
                })
            }
            Err(e) => {
                tracing::warn!(
                    table = %self.config.table,
                    error = %e,
                    "nft rejected the incremental update; replacing the whole table"
                );
                self.apply_full(desired)
            }
        }
    }

    fn remove(&mut self) -> Result<(), DataplaneError> {
        let action = format!("removal of table inet {}", self.config.table);
        if !plan::is_identifier(&self.config.table) {
            return Err(failed(
                &action,
                format!("{:?} is not a valid nft table name", self.config.table),
            ));
        }
        self.executor
            .run(&render_remove(&self.config))
            .map_err(|e| failed(&action, e.to_string()))?;
        self.set_applied(None);
        Ok(())
    }

    fn kernel_state(&mut self) -> Result<String, DataplaneError> {
        let action = format!("listing table inet {}", self.config.table);
        self.executor
            .list_table(&self.config.table)
            .map(|listing| canonical_listing(&listing))
            .map_err(|e| failed(&action, e.to_string()))
    }

    fn events(&mut self) -> Result<Box<dyn EventSource>, DataplaneError> {
        let Some(events) = self.config.events else {
            return Err(DataplaneError::Unsupported {
                backend: BACKEND,
                what: "verdict events on a backend configured without them",
            });
        };
        self.executor
            .open_events(events.nflog_group)
            .map_err(|e| failed("opening verdict events", e.to_string()))
    }

    fn counters(&mut self) -> Result<Counters, DataplaneError> {
        let Some(plan) = &self.applied else {
            return Ok(Counters::default());
        };
        let listing = list_for_counters(&mut self.executor, &self.config.table)?;
        Ok(counters_of(&listing, plan))
    }

    /// Reads with another executor of the same kernel ([`NftExecutor::reader`]) and names
    /// the counters after the plan last applied.
    fn counter_reader(&mut self) -> Result<Box<dyn CounterReader>, DataplaneError> {
        let executor = self.executor.reader().ok_or(DataplaneError::Unsupported {
            backend: BACKEND,
            what: "reading counters apart from applies with this executor",
        })?;
        Ok(Box::new(NftCounterReader {
            executor,
            table: self.config.table.clone(),
            plan: self.published.clone(),
        }))
    }
}

/// Reads an [`NftDataplane`]'s counters on another thread (see
/// [`Dataplane::counter_reader`]).
pub struct NftCounterReader {
    executor: Box<dyn NftExecutor + Send>,
    table: String,
    plan: palisade_ir::PublishedPlan<Plan>,
}

impl std::fmt::Debug for NftCounterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftCounterReader")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl CounterReader for NftCounterReader {
    /// An apply landing during the listing leaves it unclear which plan the listing shows
    /// (an endpoint chain's counter can change from default deny to audit): see
    /// [`palisade_ir::read_named_counters`] (chain names are derived from the rule or the
    /// endpoint and direction, so at most that kind is off for one read).
    fn counters(&mut self) -> Result<Counters, DataplaneError> {
        let (executor, table) = (&mut self.executor, &self.table);
        palisade_ir::read_named_counters(
            &self.plan,
            || list_for_counters(executor.as_mut(), table),
            |listing, plan| counters_of(listing, plan),
        )
    }
}

fn list_for_counters<E: NftExecutor + ?Sized>(
    executor: &mut E,
    table: &str,
) -> Result<String, DataplaneError> {
    executor.list_table_terse(table).map_err(|e| {
        failed(
            &format!("reading the counters of table inet {table}"),
            e.to_string(),
        )
    })
}

/// The counters of `listing` (the table, terse or not), named after `plan`.
fn counters_of(listing: &str, plan: &Plan) -> Counters {
    let mut counters = Counters::default();
    for (chain, count) in parse_chain_counters(listing) {
        match plan.chains.get(&chain).and_then(|c| c.counter.clone()) {
            Some(CounterOwner::Rule(origin)) => {
                let c = counters.allowed.entry(origin).or_default();
                c.packets += count.packets;
                c.bytes += count.bytes;
            }
            Some(CounterOwner::DefaultDeny(endpoint, direction)) => {
                counters.default_deny.insert((endpoint, direction), count);
            }
            Some(CounterOwner::AuditDenied(endpoint, direction)) => {
                counters.audit_denied.insert((endpoint, direction), count);
            }
            None => {}
        }
    }
    counters
}

/// `chain NAME {` ... `counter packets N bytes M` from `nft list table`: the (last)
/// counter of each chain. Palisade's chains hold at most one counter each.
fn parse_chain_counters(listing: &str) -> Vec<(String, Count)> {
    let mut out = Vec::new();
    let mut chain: Option<String> = None;
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"chain") {
            chain = words.get(1).map(|s| s.to_string());
            continue;
        }
        if let (Some(name), Some(i)) = (&chain, words.iter().position(|w| *w == "counter")) {
            let number = |key: &str| {
                words
                    .iter()
                    .skip(i)
                    .position(|w| *w == key)
                    .and_then(|p| words.get(i + p + 1))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            out.push((
                name.clone(),
                Count {
                    packets: number("packets"),
                    bytes: number("bytes"),
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_per_chain() {
        let listing = "table inet palisade {\n\tchain allow_abc {\n\t\tcomment \"x\"\n\t\tcounter packets 3 bytes 180 accept comment \"ns/p ingress[0]\"\n\t}\n\tchain ingress_ns_a_1234 {\n\t\tip saddr . meta l4proto . th dport vmap @np_x_v4\n\t\tcounter packets 0 bytes 0 drop comment \"default deny: ns/p\"\n\t}\n}\n";
        let got = parse_chain_counters(listing);
        assert_eq!(
            got,
            vec![
                (
                    "allow_abc".to_string(),
                    Count {
                        packets: 3,
                        bytes: 180
                    }
                ),
                (
                    "ingress_ns_a_1234".to_string(),
                    Count {
                        packets: 0,
                        bytes: 0
                    }
                ),
            ]
        );
    }
}
