//! # palisade-iptables
//!
//! The iptables + ipset dataplane, on either iptables backend (legacy x_tables or
//! nf_tables through `iptables-nft`). It owns, in each family's `filter` table, the chains
//! whose names start with `PAL-` and one hook rule at the top of `FORWARD`, and the ipsets
//! whose names start with `PAL-`; nothing else. It never flushes a table or a chain it
//! does not own: every change is `iptables-restore --noflush` input that declares (and so
//! flushes) Palisade's own chains only, and `ipset restore` input for its own sets. Other
//! programs' rules and sets survive every apply.
//!
//! What it must not do: decide what a policy means, or name sets. Isolation, peers, ports
//! (named ports resolved), excepts (subtracted), tiers, set identity and the diff come from
//! `palisade-ir`; this crate only maps them onto chains and sets. It depends on
//! `palisade-ir` alone.
//!
//! ## Layout
//! See `plan.rs`: a hook `FORWARD -> PAL-FORWARD` for packets not of established or
//! related connections (invalid ones dropped), dispatch gates (ipsets of endpoint addresses per direction) and dispatch trees
//! (`PAL-EGRESS`/`PAL-INGRESS`, at most 16 rules per node), one chain per endpoint and
//! filtered direction (`PAL-I-<hash>`/`PAL-E-<hash>`) holding one rule per policy rule
//! (comment = its [`palisade_ir::RuleOrigin`], counter = its attribution) and the default
//! deny; peers as `hash:net` ipsets per IR set id and family.
//!
//! ## Applying
//! See `render.rs` for the order (sets grow before the rules, shrink after; one
//! `iptables-restore` transaction per family) and the undo when a restore fails. An update
//! renders only what changed between the plan last applied and the new one; if it fails
//! (e.g. someone deleted Palisade's objects), the backend falls back to a full apply, which
//! reads what the kernel holds and replaces it. [`SystemIptables`] drives the real tools,
//! [`FakeIptables`] is a stateful stand-in for tests.

mod canonical;
mod exec;
mod plan;
mod render;

use std::sync::Arc;

use palisade_ir::events::{EventConfig, EventSource};
use palisade_ir::{
    ApplyReport, Count, CounterReader, Counters, Dataplane, DataplaneError, NodeRuleset,
    RulesetDiff,
};

pub use canonical::canonical_state;
pub use exec::{FakeIptables, IptablesError, IptablesExecutor, IptablesMode, SystemIptables};
pub use plan::Family;
use plan::{CounterOwner, Plan};
use render::KernelView;
pub use render::Rendered;

/// The inputs of a full apply of `desired` onto a node holding nothing of Palisade's.
/// Deterministic; what `apply --dry-run` prints and the golden files hold.
pub fn render_full(desired: &NodeRuleset) -> Rendered {
    render::full(&plan::plan(desired, None), &KernelView::default())
}

/// The inputs of an update from `current` to `desired`.
pub fn render_update(current: &NodeRuleset, desired: &NodeRuleset) -> Rendered {
    render::update(&plan::plan(current, None), &plan::plan(desired, None))
}

/// The iptables [`Dataplane`]. It keeps the plan it last applied, so an update sends only
/// the chains and set members that changed.
#[derive(Debug)]
pub struct IptablesDataplane<E: IptablesExecutor> {
    executor: E,
    applied: Option<Arc<Plan>>,
    /// The plan the kernel holds, for [`IptablesCounterReader`]s on other threads: the last
    /// applied one (kept when an apply fails).
    published: palisade_ir::PublishedPlan<Plan>,
    /// Verdict events through NFLOG (see [`palisade_ir::events`]); `None`: no logging.
    events: Option<EventConfig>,
}

fn failed(backend: &'static str, action: &str, message: String) -> DataplaneError {
    DataplaneError::Apply {
        backend,
        action: action.to_string(),
        message,
    }
}

/// `ipset` undo input with every `destroy` last (elements first, then their sets).
fn undo_order(undo: &str) -> String {
    let (destroys, rest): (Vec<&str>, Vec<&str>) =
        undo.lines().partition(|l| l.starts_with("destroy "));
    let mut s = String::new();
    for l in rest.into_iter().chain(destroys) {
        s.push_str(l);
        s.push('\n');
    }
    s
}

impl<E: IptablesExecutor> IptablesDataplane<E> {
    pub fn new(executor: E) -> IptablesDataplane<E> {
        IptablesDataplane {
            executor,
            applied: None,
            published: Arc::default(),
            events: None,
        }
    }

    /// Records `plan` as applied, here and for the counter readers.
    fn set_applied(&mut self, plan: Option<Plan>) {
        let plan = plan.map(Arc::new);
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = plan.clone();
        self.applied = plan;
    }

    /// Reports verdict events as `events` says (NFLOG rules beside the verdicts).
    pub fn with_events(mut self, events: Option<EventConfig>) -> IptablesDataplane<E> {
        self.events = events;
        self
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

    fn backend(&self) -> &'static str {
        self.executor.mode().backend_name()
    }

    fn check(&self, rs: &NodeRuleset) -> Result<(), DataplaneError> {
        rs.validate().map_err(|source| DataplaneError::Invalid {
            backend: self.backend(),
            source,
        })?;
        // The audit tier returns what it matches (plan.rs), which would skip a baseline.
        if rs.audit_beside_baseline().is_some() {
            return Err(DataplaneError::Unsupported {
                backend: self.backend(),
                what: "an audit tier beside a baseline tier",
            });
        }
        Ok(())
    }

    /// Reads what the kernel holds of Palisade's chains and sets.
    fn kernel_view(&mut self) -> Result<KernelView, exec::IptablesError> {
        let mut view = KernelView::default();
        for family in Family::BOTH {
            let save = self.executor.save(family)?;
            view.read_save(family.index(), &save);
        }
        view.sets = self
            .executor
            .ipset_names()?
            .into_iter()
            .filter(|n| n.starts_with(plan::PREFIX))
            .collect();
        Ok(view)
    }

    /// Runs the five steps of `r`; on a failed restore, undoes what ran and returns the
    /// error. `undo_tables` moves a family's table back when a later family fails.
    fn run(&mut self, r: &Rendered, undo_tables: [&str; 2]) -> Result<(), String> {
        if r.restore.iter().all(String::is_empty) {
            // Members only (a pod joining or leaving): one `ipset restore`, in order.
            let input = format!("{}{}", r.ipset_before, r.ipset_after);
            return self
                .executor
                .ipset_restore(&input)
                .map_err(|e| e.to_string());
        }
        self.executor.ipset_restore(&r.ipset_before).map_err(|e| {
            let _ = self.executor.ipset_restore(&undo_order(&r.undo_before));
            e.to_string()
        })?;
        for family in Family::BOTH {
            let input = &r.restore[family.index()];
            if input.is_empty() {
                continue;
            }
            if let Err(e) = self.executor.restore(family, input) {
                if family == Family::V6
                    && !undo_tables[0].is_empty()
                    && let Err(u) = self.executor.restore(Family::V4, undo_tables[0])
                {
                    tracing::error!(error = %u, "cannot undo the IPv4 half of a failed apply");
                }
                let _ = self.executor.ipset_restore(&undo_order(&r.undo_before));
                return Err(e.to_string());
            }
        }
        self.executor
            .ipset_restore(&r.ipset_after)
            .map_err(|e| e.to_string())
    }
}

impl<E: IptablesExecutor + Send> Dataplane for IptablesDataplane<E> {
    fn name(&self) -> &'static str {
        self.backend()
    }

    fn apply_full(&mut self, desired: &NodeRuleset) -> Result<ApplyReport, DataplaneError> {
        let backend = self.backend();
        let action = "full apply of Palisade's chains and sets";
        self.check(desired)?;
        let plan = plan::plan(desired, self.events.as_ref());
        let view = self
            .kernel_view()
            .map_err(|e| failed(backend, action, e.to_string()))?;
        let rendered = render::full(&plan, &view);
        let undo_v4 = render::undo_full_table(&plan, &view, 0);
        self.run(&rendered, [&undo_v4, ""])
            .map_err(|e| failed(backend, action, e))?;
        self.set_applied(Some(plan));
        Ok(ApplyReport {
            full: true,
            operations: rendered.operations,
        })
    }

    fn apply_update(
        &mut self,
        current: &NodeRuleset,
        desired: &NodeRuleset,
        diff: &RulesetDiff,
    ) -> Result<ApplyReport, DataplaneError> {
        let backend = self.backend();
        let action = "update of Palisade's chains and sets";
        self.check(desired)?;
        let old = self
            .applied
            .take()
            .unwrap_or_else(|| Arc::new(plan::plan(current, self.events.as_ref())));
        // Sets and endpoints the diff does not name are taken from the old plan as they
        // are; the rest is planned anew, then the two plans are compared.
        let changed_sets: std::collections::BTreeSet<palisade_ir::SetId> = diff
            .peer_set_members
            .keys()
            .chain(diff.peer_sets_added.keys())
            .cloned()
            .collect();
        let changed_endpoints: std::collections::BTreeSet<String> = diff
            .endpoints_changed
            .keys()
            .chain(diff.endpoints_added.keys())
            .cloned()
            .collect();
        let new = plan::plan_with(
            desired,
            Some(&plan::Reuse {
                old: &old,
                changed_sets: &changed_sets,
                changed_endpoints: &changed_endpoints,
            }),
            self.events.as_ref(),
        );
        let rendered = render::update(&old, &new);
        if rendered.operations == 0 {
            self.set_applied(Some(new));
            return Ok(ApplyReport {
                full: false,
                operations: 0,
            });
        }
        let (undo_v4, _) = render::table_update(&new.tables[0], &old.tables[0]);
        match self.run(&rendered, [&undo_v4, ""]) {
            Ok(()) => {
                self.set_applied(Some(new));
                Ok(ApplyReport {
                    full: false,
                    operations: rendered.operations,
                })
            }
            Err(e) => {
                tracing::warn!(backend, error = %e, "the incremental update failed; applying the whole ruleset");
                self.apply_full(desired)
                    .map_err(|full| failed(backend, action, format!("{e}; then {full}")))
            }
        }
    }

    fn remove(&mut self) -> Result<(), DataplaneError> {
        let backend = self.backend();
        let action = "removal of Palisade's chains and sets";
        let view = self
            .kernel_view()
            .map_err(|e| failed(backend, action, e.to_string()))?;
        for family in Family::BOTH {
            let i = family.index();
            if view.chains[i].is_empty() && view.hooks[i].is_empty() {
                continue;
            }
            let mut s = String::from("*filter\n");
            for hook in &view.hooks[i] {
                s.push_str(&format!("-D FORWARD {hook}\n"));
            }
            for c in &view.chains[i] {
                s.push_str(&format!(":{c} - [0:0]\n"));
            }
            for c in &view.chains[i] {
                s.push_str(&format!("-X {c}\n"));
            }
            s.push_str("COMMIT\n");
            self.executor
                .restore(family, &s)
                .map_err(|e| failed(backend, action, e.to_string()))?;
        }
        let destroys: String = view.sets.iter().map(|n| format!("destroy {n}\n")).collect();
        self.executor
            .ipset_restore(&destroys)
            .map_err(|e| failed(backend, action, e.to_string()))?;
        self.set_applied(None);
        Ok(())
    }

    fn kernel_state(&mut self) -> Result<String, DataplaneError> {
        let backend = self.backend();
        let action = "reading Palisade's chains and sets";
        let mut saves = Vec::new();
        for family in Family::BOTH {
            saves.push(
                self.executor
                    .save(family)
                    .map_err(|e| failed(backend, action, e.to_string()))?,
            );
        }
        let sets = self
            .executor
            .ipset_save()
            .map_err(|e| failed(backend, action, e.to_string()))?;
        Ok(canonical_state(&saves[0], &saves[1], &sets))
    }

    fn events(&mut self) -> Result<Box<dyn EventSource>, DataplaneError> {
        let backend = self.backend();
        let Some(events) = self.events else {
            return Err(DataplaneError::Unsupported {
                backend,
                what: "verdict events on a backend configured without them",
            });
        };
        self.executor
            .open_events(events.nflog_group)
            .map_err(|e| failed(backend, "opening verdict events", e.to_string()))
    }

    fn counters(&mut self) -> Result<Counters, DataplaneError> {
        let backend = self.backend();
        let Some(plan) = self.applied.clone() else {
            return Ok(Counters::default());
        };
        let saves = save_for_counters(&mut self.executor, backend)?;
        Ok(counters_of(&saves, &plan))
    }

    /// Reads with another executor of the same kernel ([`IptablesExecutor::reader`]) and
    /// names the counters after the plan last applied.
    fn counter_reader(&mut self) -> Result<Box<dyn CounterReader>, DataplaneError> {
        let backend = self.backend();
        let executor = self.executor.reader().ok_or(DataplaneError::Unsupported {
            backend,
            what: "reading counters apart from applies with this executor",
        })?;
        Ok(Box::new(IptablesCounterReader {
            executor,
            backend,
            plan: self.published.clone(),
        }))
    }
}

/// Reads an [`IptablesDataplane`]'s counters on another thread (see
/// [`Dataplane::counter_reader`]).
pub struct IptablesCounterReader {
    executor: Box<dyn IptablesExecutor + Send>,
    backend: &'static str,
    plan: palisade_ir::PublishedPlan<Plan>,
}

impl std::fmt::Debug for IptablesCounterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IptablesCounterReader")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl CounterReader for IptablesCounterReader {
    /// Named after the plan in force during the listing ([`palisade_ir::read_named_counters`]:
    /// should an apply overlap both tries, the rule positions of a chain that changed may be
    /// off for that one read).
    fn counters(&mut self) -> Result<Counters, DataplaneError> {
        let (executor, backend) = (&mut self.executor, self.backend);
        palisade_ir::read_named_counters(
            &self.plan,
            || save_for_counters(executor.as_mut(), backend),
            counters_of,
        )
    }
}

/// `iptables-save -c` of both families, indexed by [`Family::index`].
fn save_for_counters<E: IptablesExecutor + ?Sized>(
    executor: &mut E,
    backend: &'static str,
) -> Result<[String; 2], DataplaneError> {
    let action = "reading the counters of Palisade's chains";
    let mut saves: [String; 2] = Default::default();
    for family in Family::BOTH {
        saves[family.index()] = executor
            .save(family)
            .map_err(|e| failed(backend, action, e.to_string()))?;
    }
    Ok(saves)
}

/// The counters of `saves`, named after `plan`.
fn counters_of(saves: &[String; 2], plan: &Plan) -> Counters {
    let mut counters = Counters::default();
    for family in Family::BOTH {
        let table = &plan.tables[family.index()];
        for (chain, index, count) in canonical::rule_counters(&saves[family.index()]) {
            let Some(owner) = table
                .chains
                .get(&chain)
                .and_then(|rules| rules.get(index))
                .and_then(|r| r.counter.clone())
            else {
                continue;
            };
            match owner {
                CounterOwner::Rule(origin) => {
                    add(counters.allowed.entry(origin).or_default(), count)
                }
                CounterOwner::DefaultDeny(endpoint, direction) => add(
                    counters
                        .default_deny
                        .entry((endpoint, direction))
                        .or_default(),
                    count,
                ),
                CounterOwner::AuditDenied(endpoint, direction) => add(
                    counters
                        .audit_denied
                        .entry((endpoint, direction))
                        .or_default(),
                    count,
                ),
            }
        }
    }
    counters
}

fn add(total: &mut Count, count: Count) {
    total.packets += count.packets;
    total.bytes += count.bytes;
}
